//! Batch executions (`MESSAGES_PER_EXECUTION` = N, issue 12): messages per second against the
//! StartExecution quota's refill, what the coordination table does per message, the latency
//! from enqueue to start, and the bill per million messages.
//!
//! Every run drives the real handler through the one mapping loop (`local_stack::esm::run`,
//! K pollers, one `Starter` each, in-process) against one FakeSfn holding the account's exact
//! bucket. The starters are coordinated (one shared budget) with claims, both in a `MemoryStore`
//! with the shared section's 5 – 10 ms per call (it counts the budget's calls itself); the
//! claims go through [`Tables`], which counts each kind of claim call and prices each claim
//! transaction as DynamoDB bills it. The invoker is timed, so the
//! Lambda duration billed is measured.
//!
//! Two loads: a backlog enqueued at once (throughput: is the quota, counted in executions, the
//! only limit?), and a steady feed (latency: what grouping and claiming add per message).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use local_stack::esm::gather::GatherConfig;
use local_stack::esm::in_process::InProcess;
use local_stack::esm::runner::{self as esm, EsmConfig, StopReason};
use local_stack::fake_sfn::FakeSfnHandle;
use local_stack::sim::{DlqEntry, SimQueue};
use serde_json::{json, Value};
use sfn_pacer::aws::SfnStarter;
use sfn_pacer::metrics::Report;
use sfn_pacer::start::claim::{ClaimRequest, ClaimStore, ClaimWrite, Record};
use sfn_pacer::start::memory::MemoryStore;
use sfn_pacer::start::table::StoreError;
use sfn_pacer::start::StartExecution;
use sfn_pacer::Starter;
use tokio::time::Instant;

use crate::billing::{self, Transaction, Usage};
use crate::common::{config, sdk_config, BenchError, RequestDelay, Runtimes, Timed, SERVER_THREAD};
use crate::cpu;
use crate::drain::Settings;
use crate::report::{opt, pass};
use crate::shared::{Counted, QUOTA_KEY, TABLE_LATENCY};
use crate::stats;

/// The targets of batch executions.
pub mod targets {
    /// Steady messages per second at N = 10, as a multiple of the quota's refill.
    pub const RATE_MULTIPLE_AT_10: f64 = 8.0;
}

/// How the messages arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `messages` enqueued at once before the mapping starts.
    Backlog {
        /// Messages.
        messages: u64,
    },
    /// Messages enqueued evenly at `per_second` for `seconds`, while the mapping runs.
    Feed {
        /// Messages per second.
        per_second: f64,
        /// How long the producer sends.
        seconds: f64,
    },
}

/// One run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `MESSAGES_PER_EXECUTION`.
    pub per_execution: usize,
    /// Instances (pollers), `MAX_CONCURRENCY`.
    pub instances: usize,
    /// The mapping's BatchSize.
    pub batch_size: usize,
    /// The mapping's batching window.
    pub batching_window: Duration,
    /// The account's bucket: B, r.
    pub account: (u64, f64),
    /// Bytes of each message body.
    pub body_bytes: usize,
    /// How the messages arrive.
    pub load: Load,
    /// The run stops after this long, drained or not.
    pub max_run: Duration,
}

impl Plan {
    /// Messages the run sends.
    pub fn messages(&self) -> u64 {
        match self.load {
            Load::Backlog { messages } => messages,
            Load::Feed { per_second, seconds } => (per_second * seconds).floor() as u64,
        }
    }
}

/// What the runs share besides N and the load.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Instances (pollers).
    pub instances: usize,
    /// The mapping's BatchSize.
    pub batch_size: usize,
    /// The account's bucket: B, r.
    pub account: (u64, f64),
    /// The backlog's seconds of refill beyond the burst, counted in executions of N messages:
    /// `M = N × (B + T* × r)`.
    pub ideal_seconds: f64,
    /// Bytes of each message body.
    pub body_bytes: usize,
    /// The steady feeds' rates, messages per second, and how long each lasts.
    pub feeds: Vec<f64>,
    /// See `feeds`.
    pub feed_seconds: f64,
    /// The feeds' batching window (the template's MaximumBatchingWindowInSeconds).
    pub feed_window: Duration,
    /// The backlogs' batching window.
    pub backlog_window: Duration,
}

/// A feed is run only at N whose quota allows this share of its rate at full groups.
pub const FEED_HEADROOM: f64 = 0.9;

/// The runs for each N: a backlog of `N × (B + T* × r)` messages, then each feed that N can
/// sustain (at most [`FEED_HEADROOM`] of `N × r`).
pub fn plans(per_execution: &[usize], shape: &Shape) -> Vec<Plan> {
    let (burst, rate) = shape.account;
    let executions = crate::shared::backlog(burst as f64, rate, shape.ideal_seconds);
    let mut out = Vec::new();
    for &n in per_execution {
        let plan = |load, batching_window, max_run| Plan {
            per_execution: n,
            instances: shape.instances,
            batch_size: shape.batch_size,
            batching_window,
            account: shape.account,
            body_bytes: shape.body_bytes,
            load,
            max_run,
        };
        let drain_bound = Duration::from_secs_f64((shape.ideal_seconds * 6.0).max(60.0));
        out.push(plan(
            Load::Backlog {
                messages: n as u64 * executions,
            },
            shape.backlog_window,
            drain_bound,
        ));
        for &per_second in &shape.feeds {
            if per_second <= FEED_HEADROOM * n as f64 * rate {
                let load = Load::Feed {
                    per_second,
                    seconds: shape.feed_seconds,
                };
                let bound = Duration::from_secs_f64(shape.feed_seconds + 30.0);
                out.push(plan(load, shape.feed_window, bound));
            }
        }
    }
    out
}

/// A message body of exactly `bytes` bytes (at least its fields' own length): a small order
/// document padded with a `note`, distinct per message. No `items` field, so a single
/// execution's input (the body) is not mistaken for a batch's.
pub fn body(i: u64, bytes: usize) -> String {
    let head = format!(
        r#"{{"orderId":"order-{i:08}","customer":"c-{}","amount":{}.{:02},"note":""#,
        i % 977,
        i % 500,
        i % 100
    );
    let pad = bytes.saturating_sub(head.len() + r#""}"#.len());
    format!(r#"{head}{}"}}"#, "x".repeat(pad))
}

/// A 1 s window at most this much above the refill is past the burst.
pub const STEADY_TOLERANCE: f64 = 0.05;

/// The steady window of a drain (start times since the origin, sorted): from the first 1 s
/// window, in steps of 100 ms, holding at most `(1 + STEADY_TOLERANCE) × rate` starts (the
/// burst is spent), to 0.5 s before the last start. `None` when that is shorter than 1 s.
pub fn steady_window(sorted: &[Duration], rate: f64) -> Option<(Duration, Duration)> {
    let (second, step) = (Duration::from_secs(1), Duration::from_millis(100));
    let to = sorted.last()?.checked_sub(Duration::from_millis(500))?;
    let mut from = Duration::ZERO;
    while from + second <= to {
        if stats::rate_in(sorted, from, from + second) <= (1.0 + STEADY_TOLERANCE) * rate {
            return (to >= from + second).then_some((from, to));
        }
        from += step;
    }
    None
}

/// Calls and request units of the coordination table, by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableCounts {
    /// Budget reads (GetItem, strongly consistent).
    pub budget_reads: u64,
    /// Budget writes (conditional UpdateItem or Put), applied or refused.
    pub budget_writes: u64,
    /// Claim transactions (TransactWriteItems), and those refused.
    pub transactions: u64,
    /// See `transactions`.
    pub refused_transactions: u64,
    /// Items written by the applied transactions (claims and records).
    pub claim_items: u64,
    /// Reads of claims (BatchGetItem) after a refusal, and the keys they read.
    pub claim_reads: u64,
    /// See `claim_reads`.
    pub claim_read_keys: u64,
    /// Reads of an execution's record (GetItem), and their read request units (by its size).
    pub record_reads: u64,
    /// See `record_reads`.
    pub record_read_units: u64,
    /// Write request units of the claim transactions, as on AWS (36-character message ids).
    pub transaction_write_units: u64,
    /// Bytes the transactions left in the table, as on AWS, DynamoDB's item overhead included.
    pub stored_bytes: u64,
    /// Records trimmed after their execution's start was confirmed (UpdateItem), their write
    /// request units (the record's larger size), and the bytes they removed from `stored_bytes`.
    pub confirms: u64,
    /// See `confirms`.
    pub confirm_write_units: u64,
    /// See `confirms`.
    pub trimmed_bytes: u64,
    /// Every call (`MemoryStore::calls`).
    pub calls: u64,
    /// Budget writes refused by their condition (`MemoryStore::budget_counts`).
    pub refused_budget_writes: u64,
}

impl TableCounts {
    /// Write request units: the transactions and the confirmations, plus one per budget write
    /// (a small item).
    pub fn write_units(&self) -> u64 {
        self.transaction_write_units + self.confirm_write_units + self.budget_writes
    }

    /// Bytes kept once the confirmed records are trimmed.
    pub fn kept_bytes(&self) -> u64 {
        self.stored_bytes.saturating_sub(self.trimmed_bytes)
    }

    /// Read request units: one per budget read and per key of a claim read (strongly
    /// consistent reads of items under 4 KB), and a record's by its size.
    pub fn read_units(&self) -> u64 {
        self.budget_reads + self.claim_read_keys + self.record_read_units
    }
}

/// The claims as the instances see them: the [`MemoryStore`], counting each kind of claim call
/// and what it would bill on AWS (the budget's calls the store counts itself).
struct Tables {
    inner: Arc<MemoryStore>,
    counts: Mutex<TableCounts>,
    /// Each written execution's transaction as on AWS, to size its confirmation.
    written: Mutex<HashMap<String, Transaction>>,
}

impl Tables {
    fn count(&self, f: impl FnOnce(&mut TableCounts)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

#[async_trait]
impl ClaimStore for Tables {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimWrite, StoreError> {
        let written = ClaimStore::claim(&*self.inner, request).await;
        let on_aws = Transaction {
            scope_bytes: request.scope.len(),
            name_bytes: request.execution.len(),
            key_bytes: request.keys.iter().map(String::len).collect(),
            input_bytes: request.input.len(),
            expires_at_epoch_s: request.expires_at_epoch_s,
        }
        .with_sqs_message_ids();
        self.count(|c| {
            c.transactions += 1;
            // A cancelled transaction is billed too.
            c.transaction_write_units += on_aws.write_units();
            match written {
                Ok(ClaimWrite::Written) => {
                    c.claim_items += request.keys.len() as u64 + 1;
                    c.stored_bytes += on_aws.stored_bytes() as u64;
                }
                _ => c.refused_transactions += 1,
            }
        });
        if let Ok(ClaimWrite::Written) = written {
            let mut all = self.written.lock().unwrap_or_else(|p| p.into_inner());
            all.insert(format!("{}#{}", request.scope, request.execution), on_aws);
        }
        written
    }

    async fn confirm(&self, scope: &str, execution: &str) -> Result<(), StoreError> {
        let confirmed = self.inner.confirm(scope, execution).await;
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let (Ok(()), Some(t)) = (&confirmed, written.get(&format!("{scope}#{execution}"))) {
            self.count(|c| {
                c.confirms += 1;
                c.confirm_write_units += t.confirm_write_units();
                c.trimmed_bytes += t.record_bytes().saturating_sub(t.trimmed_record_bytes()) as u64;
            });
        }
        confirmed
    }

    async fn record(&self, scope: &str, execution: &str) -> Result<Option<Record>, StoreError> {
        let record = self.inner.record(scope, execution).await;
        let bytes = match &record {
            Ok(Some(Record::Pending(input))) => input.len(),
            _ => 0,
        } + 1024;
        self.count(|c| {
            c.record_reads += 1;
            c.record_read_units += billing::read_units(bytes);
        });
        record
    }

    async fn claimed(&self, scope: &str, keys: &[String]) -> Result<HashMap<String, String>, StoreError> {
        self.count(|c| {
            c.claim_reads += 1;
            c.claim_read_keys += keys.len() as u64;
        });
        self.inner.claimed(scope, keys).await
    }

    async fn recorded(&self, scope: &str, execution: &str) -> Result<Option<String>, StoreError> {
        let recorded = self.inner.recorded(scope, execution).await;
        // The record's other attributes are well under 1 KB: its input decides.
        let bytes = recorded.as_ref().ok().and_then(Option::as_ref).map_or(0, String::len) + 1024;
        self.count(|c| {
            c.record_reads += 1;
            c.record_read_units += billing::read_units(bytes);
        });
        recorded
    }
}

/// A drain's steady part.
#[derive(Debug, Clone, PartialEq)]
pub struct Steady {
    /// The window, seconds since the origin.
    pub from: f64,
    /// See `from`.
    pub to: f64,
    /// Messages started per second in it.
    pub messages_per_second: f64,
    /// Executions started per second in it.
    pub executions_per_second: f64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct BatchRun {
    /// The plan.
    pub plan: Plan,
    /// Messages sent.
    pub messages: u64,
    /// Distinct messages carried by the executions the endpoint accepted.
    pub started: u64,
    /// Executions the endpoint accepted.
    pub executions: u64,
    /// Origin (backlog complete, or the feed's first send) → queue empty, seconds.
    pub drain_seconds: f64,
    /// Whether the queue emptied before `max_run`.
    pub drained: bool,
    /// Backlog: the steady part of the drain.
    pub steady: Option<Steady>,
    /// Our StartExecution calls, and how many were throttled.
    pub calls: u64,
    /// See `calls`.
    pub throttled: u64,
    /// The handlers' reports, summed.
    pub report: Report,
    /// The table's calls by kind.
    pub table: TableCounts,
    /// Enqueue (send) → start (the execution accepted) per started message, seconds.
    pub latency: Vec<f64>,
    /// Invocations, and their billed duration (each rounded up to 1 ms), seconds.
    pub invocations: u64,
    /// See `invocations`.
    pub billed_seconds: f64,
    /// Messages redriven to the DLQ, and sent there by the function.
    pub redriven: u64,
    /// See `redriven`.
    pub dead_lettered: u64,
    /// State transitions of the executions (the sample state machine for N), if countable.
    pub transitions: Option<u64>,
    /// Messages and executions started per second from the origin.
    pub messages_per_second: Vec<u64>,
    /// See `messages_per_second`.
    pub executions_per_second: Vec<u64>,
    /// Process CPU over the run, and the fake endpoint's share of it.
    pub cpu_process: Duration,
    /// See `cpu_process`.
    pub cpu_server: Duration,
    /// How long claims and records are kept (`Config::claim_ttl`, the template's queues), s.
    pub claim_ttl_seconds: f64,
}

impl BatchRun {
    /// Leased slots neither used by a call nor given back: quota lost to everyone (the
    /// lessees' `LeaseSlotsDropped`).
    pub fn unused_slots(&self) -> u64 {
        self.report.lease_slots_dropped
    }

    /// The fastest possible drain of the executions started: `max(0, (E − B) / r)`, seconds.
    pub fn ideal_seconds(&self) -> f64 {
        let (burst, rate) = self.plan.account;
        stats::ideal_drain_seconds(self.executions, burst as f64, rate)
    }

    /// T*/T for a backlog that drained.
    pub fn efficiency(&self) -> Option<f64> {
        match (self.plan.load, self.drained) {
            (Load::Backlog { .. }, true) => stats::efficiency(self.ideal_seconds(), self.drain_seconds),
            _ => None,
        }
    }

    /// Messages per execution started.
    pub fn messages_per_execution(&self) -> f64 {
        stats::ratio(self.started, self.executions)
    }

    /// Percentile `p` of enqueue → start, seconds.
    pub fn latency(&self, p: f64) -> Option<f64> {
        stats::percentile(&self.latency, p)
    }

    /// What one message used, on average.
    pub fn usage(&self) -> Usage {
        let per = |v: f64| {
            if self.started == 0 {
                0.0
            } else {
                v / self.started as f64
            }
        };
        Usage {
            executions: per(self.executions as f64),
            transitions: per(self.transitions.unwrap_or(0) as f64),
            write_units: per(self.table.write_units() as f64),
            read_units: per(self.table.read_units() as f64),
            lambda_requests: per(self.invocations as f64),
            lambda_gb_seconds: per(self.billed_seconds * billing::LAMBDA_MEMORY_MB / 1024.0),
            stored_bytes: per(self.table.kept_bytes() as f64),
            retention_seconds: self.claim_ttl_seconds,
        }
    }

    /// The same run under issue 12's rules: records kept whole (no confirmation writes) and
    /// everything kept 91 days. The claim transactions and reads are the same either way.
    pub fn usage_issue_12(&self) -> Usage {
        let per = |v: u64| v as f64 / self.started.max(1) as f64;
        Usage {
            write_units: per(self.table.write_units() - self.table.confirm_write_units),
            stored_bytes: per(self.table.stored_bytes),
            retention_seconds: billing::ISSUE_12_RETENTION_SECONDS,
            ..self.usage()
        }
    }

    /// Client CPU (the process less the fake endpoint) per message sent, µs.
    pub fn client_cpu_per_message_us(&self) -> f64 {
        stats::micros_per(self.cpu_process.saturating_sub(self.cpu_server), self.messages)
    }
}

/// The sample state machine N runs on (`infra/`), parsed.
fn sample_state_machine(per_execution: usize) -> Option<Value> {
    let file = if per_execution > 1 {
        "state-machine-batch.asl.json"
    } else {
        "state-machine.asl.json"
    };
    let path = local_stack::paths::workspace_root().join("infra").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Called about every 100 ms with (messages started, messages).
pub type ProgressFn<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Runs one plan against a fresh FakeSfn.
pub fn run(
    runtimes: &Runtimes,
    plan: &Plan,
    settings: &Settings,
    run_id: u64,
    progress: ProgressFn<'_>,
) -> Result<BatchRun, BenchError> {
    let (burst, rate) = plan.account;
    let sfn = settings.fake_sfn(runtimes, burst, rate)?;
    let result = runtimes.client.block_on(run_on(&sfn, plan, settings, run_id, progress));
    runtimes.server.block_on(sfn.shutdown());
    result
}

/// The starters of a plan, each with its counted, delayed StartExecution client.
async fn starters(
    sfn: &FakeSfnHandle,
    plan: &Plan,
    settings: &Settings,
    queue: &Arc<SimQueue>,
    tables: &Arc<Tables>,
) -> Result<(Vec<Arc<Starter>>, Vec<Arc<Counted>>), BenchError> {
    let sdk = sdk_config(&sfn.endpoint()).await;
    let (burst, rate) = plan.account;
    let env = [
        ("STARTS_PER_SECOND", rate.to_string()),
        ("STARTS_BURST", burst.to_string()),
        ("MAX_CONCURRENCY", plan.instances.to_string()),
        ("RETRY_BASE_SECONDS", settings.retry_base_seconds.to_string()),
        ("RETRY_MAX_SECONDS", settings.retry_max_seconds.to_string()),
        ("COORDINATION_TABLE", "bench-coordination".to_string()),
        ("QUOTA_KEY", QUOTA_KEY.to_string()),
        ("MESSAGES_PER_EXECUTION", plan.per_execution.to_string()),
        // The template's queues (work 4 days, DLQ 14 days): how long claims are kept.
        ("QUEUE_RETENTION_SECONDS", "345600".to_string()),
        ("DLQ_RETENTION_SECONDS", "1209600".to_string()),
    ];
    let (mut starters, mut counters) = (Vec::new(), Vec::new());
    for i in 0..plan.instances {
        let cfg = config(&env)?;
        let inner: Arc<dyn StartExecution> = Arc::new(SfnStarter::new(&sdk, cfg.call_timeout));
        let seed = settings.seed.wrapping_mul(1000).wrapping_add(i as u64);
        let delayed = Arc::new(RequestDelay::new(
            inner,
            settings.request_latency,
            settings.request_jitter,
            seed,
        ));
        let counted = Arc::new(Counted::new(delayed));
        counters.push(counted.clone());
        let starter =
            Starter::coordinated(cfg, counted, queue.clone(), tables.inner.clone()).with_claims(tables.clone());
        starters.push(Arc::new(starter));
    }
    Ok((starters, counters))
}

/// The mapping's configuration: the same as `sim::drive`'s, except that the run ends when
/// `shutdown` does (the producer is done and the queue is empty), not on the first empty check.
fn mapping(plan: &Plan, settings: &Settings, queue: &SimQueue) -> EsmConfig {
    EsmConfig {
        gather: GatherConfig::new(plan.batch_size, plan.batching_window, 0),
        max_concurrency: plan.instances,
        function_timeout: settings.function_timeout,
        queue_arn: queue.arn().to_string(),
        region: local_stack::moto::REGION.to_string(),
        until_empty: false,
        empty_polls: 1,
        poll_interval: Duration::from_millis(10),
        empty_receive_pause: Duration::from_millis(10),
        max_run: Some(plan.max_run),
        progress_interval: None,
    }
}

/// Sends `count` messages evenly over `seconds`, in steps of 10 ms; records each send time.
async fn feed(
    queue: Arc<SimQueue>,
    plan: Plan,
    sfn: local_stack::fake_sfn::FakeSfnState,
    sent: Sent,
    done: Arc<AtomicBool>,
) {
    let (per_second, count) = match plan.load {
        Load::Feed { per_second, .. } => (per_second, plan.messages()),
        Load::Backlog { .. } => (0.0, 0),
    };
    let began = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut next = 0u64;
    while next < count {
        tick.tick().await;
        let due = ((began.elapsed().as_secs_f64() * per_second).floor() as u64 + 1).min(count);
        for i in next..due {
            let id = queue.send(body(i, plan.body_bytes));
            sent.lock().unwrap_or_else(|p| p.into_inner()).insert(id, sfn.elapsed());
        }
        next = due.max(next);
    }
    done.store(true, Ordering::Relaxed);
}

/// Message id → when it was sent (the fake endpoint's clock).
type Sent = Arc<Mutex<HashMap<String, Duration>>>;

/// The message ids an execution carries: its input's items (batch), or its name (single: the
/// name is the message id).
fn carried(per_execution: usize, name: &str, input: &str) -> Vec<String> {
    if per_execution <= 1 {
        return vec![name.to_string()];
    }
    let ids = serde_json::from_str::<Value>(input).ok().and_then(|v| {
        v.get("items")?.as_array().map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("messageId")?.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
    });
    ids.unwrap_or_default()
}

async fn run_on(
    sfn: &FakeSfnHandle,
    plan: &Plan,
    settings: &Settings,
    run_id: u64,
    progress: ProgressFn<'_>,
) -> Result<BatchRun, BenchError> {
    let store = Arc::new(MemoryStore::new().with_latency(TABLE_LATENCY.0, TABLE_LATENCY.1));
    let tables = Arc::new(Tables {
        inner: store.clone(),
        counts: Mutex::new(TableCounts::default()),
        written: Mutex::default(),
    });
    let queue = SimQueue::new(
        &format!("batch-{run_id}"),
        settings.max_receive_count,
        settings.visibility_timeout,
    );
    let (starters, counters) = starters(sfn, plan, settings, &queue, &tables).await?;
    let claim_ttl_seconds = starters
        .first()
        .map_or(0.0, |s| s.config().claim_ttl(false).as_secs_f64());
    let invoker = Arc::new(Timed::new(InProcess::new(starters, settings.function_timeout, None)));
    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    let produced = Arc::new(AtomicBool::new(false));
    if let Load::Backlog { messages } = plan.load {
        let mut map = sent.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..messages {
            let id = queue.send(body(i, plan.body_bytes));
            map.insert(id, sfn.elapsed());
        }
        produced.store(true, Ordering::Relaxed);
    }

    let cpu_before = cpu::process_cpu()?;
    let server_before = cpu::named_threads_cpu(SERVER_THREAD)?;
    // Backlog: complete now. Feed: its first send is now.
    let origin = sfn.elapsed();
    let producer = tokio::spawn(feed(
        queue.clone(),
        plan.clone(),
        sfn.state(),
        sent.clone(),
        produced.clone(),
    ));
    let drained_at = Arc::new(Mutex::new(None));
    let shutdown = {
        let (queue, produced, drained_at, state) = (queue.clone(), produced.clone(), drained_at.clone(), sfn.state());
        async move {
            loop {
                if produced.load(Ordering::Relaxed) && queue.is_drained() {
                    *drained_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.elapsed());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let mapping = tokio::spawn(esm::run(
        queue.clone(),
        invoker.clone(),
        mapping(plan, settings, &queue),
        shutdown,
    ));
    let summary = {
        let mut mapping = mapping;
        loop {
            tokio::select! {
                r = &mut mapping => break r.map_err(|e| format!("the mapping panicked: {e}"))?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    progress(sfn.execution_count() as u64 * plan.per_execution as u64, plan.messages());
                }
            }
        }
    };
    producer.abort();
    if summary.stop_reason == StopReason::WorkerFailed {
        return Err(format!("a mapping poller failed: {summary:?}").into());
    }
    let cpu_process = cpu::process_cpu()?.saturating_sub(cpu_before);
    let cpu_server = cpu::named_threads_cpu(SERVER_THREAD)?.saturating_sub(server_before);

    let sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let executions = sfn.executions();
    let definition = sample_state_machine(plan.per_execution);
    let (mut message_times, mut execution_times, mut latency) = (Vec::new(), Vec::new(), Vec::new());
    let mut transitions = Some(0u64);
    let mut seen = std::collections::HashSet::new();
    for e in &executions {
        let ids = carried(plan.per_execution, &e.name, &e.input);
        execution_times.push(e.accepted_at.saturating_sub(origin));
        transitions = match (transitions, &definition) {
            (Some(sum), Some(d)) => billing::transitions(d, ids.len() as u64).map(|t| sum + t),
            _ => None,
        };
        for id in ids {
            if let (Some(at), true) = (sent.get(&id), seen.insert(id.clone())) {
                message_times.push(e.accepted_at.saturating_sub(origin));
                latency.push(e.accepted_at.saturating_sub(*at).as_secs_f64());
            }
        }
    }
    execution_times.sort_unstable();
    let drained_at = *drained_at.lock().unwrap_or_else(|p| p.into_inner());
    let end = drained_at.unwrap_or_else(|| sfn.elapsed());
    let drain_seconds = end.saturating_sub(origin).as_secs_f64();
    let rate = plan.account.1;
    let steady = match plan.load {
        Load::Backlog { .. } => steady_window(&execution_times, rate).map(|(from, to)| Steady {
            from: from.as_secs_f64(),
            to: to.as_secs_f64(),
            messages_per_second: stats::rate_in(&message_times, from, to),
            executions_per_second: stats::rate_in(&execution_times, from, to),
        }),
        Load::Feed { .. } => None,
    };
    let dlq = queue.dlq();
    let redriven = dlq.iter().filter(|e| matches!(e, DlqEntry::Redriven { .. })).count() as u64;
    let second = Duration::from_secs(1);
    let slots = drain_seconds.ceil() as usize;
    let mut table = tables.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    table.calls = store.calls();
    let budget = store.budget_counts();
    table.budget_reads = budget.reads;
    table.budget_writes = budget.applied + budget.refused;
    table.refused_budget_writes = budget.refused;
    let report = invoker.inner.totals();
    progress(seen.len() as u64, plan.messages());
    Ok(BatchRun {
        plan: plan.clone(),
        messages: sent.len() as u64,
        started: seen.len() as u64,
        executions: executions.len() as u64,
        drain_seconds,
        drained: drained_at.is_some(),
        steady,
        calls: counters.iter().map(|c| c.calls.load(Ordering::Relaxed)).sum(),
        throttled: counters.iter().map(|c| c.throttled.load(Ordering::Relaxed)).sum(),
        report,
        table,
        latency,
        invocations: invoker.invocations(),
        billed_seconds: invoker.billed_ms() as f64 / 1000.0,
        redriven,
        dead_lettered: dlq.len() as u64 - redriven,
        transitions,
        messages_per_second: stats::series(&message_times, Duration::ZERO, second, slots),
        executions_per_second: stats::series(&execution_times, Duration::ZERO, second, slots),
        cpu_process,
        cpu_server,
        claim_ttl_seconds,
    })
}

/// The section's tables: the drains, the table per message, the feeds, the targets, the bill.
pub fn markdown(md: &mut String, runs: &[BatchRun], settings: Option<&Settings>) {
    use std::fmt::Write as _;
    let backlogs: Vec<&BatchRun> = runs
        .iter()
        .filter(|r| matches!(r.plan.load, Load::Backlog { .. }))
        .collect();
    let feeds: Vec<&BatchRun> = runs
        .iter()
        .filter(|r| matches!(r.plan.load, Load::Feed { .. }))
        .collect();
    let _ = writeln!(md, "## Batch executions (MESSAGES_PER_EXECUTION)\n");
    if let (Some(first), Some(s)) = (runs.first(), settings) {
        let p = &first.plan;
        let _ = writeln!(
            md,
            "K = {} instances (MAX_CONCURRENCY), BatchSize {}, coordinated (one shared budget) with claims, the table a \
             `MemoryStore` with {} – {} ms per call. Account B = {}, r = {}/s (FakeSfn's exact bucket); request path {} ms + \
             U[0, {}] ms, response {} ms + U[0, {}] ms. Bodies of {} bytes. Backlog: N × (B + T* × r) messages enqueued \
             at once, batching window {} ms; T = backlog complete → queue empty; T* = max(0, (E − B)/r) for the E \
             executions started; the steady window runs from the first 1 s (in 100 ms steps) holding at most 1.05 × r \
             starts (the burst spent) to 0.5 s before the last start. Feed: messages sent evenly for the stated time, batching window {} ms. Enqueue → start: each \
             message's send → its execution accepted by the endpoint.\n",
            p.instances,
            p.batch_size,
            TABLE_LATENCY.0.as_millis(),
            TABLE_LATENCY.1.as_millis(),
            p.account.0,
            p.account.1,
            s.request_latency.as_millis(),
            s.request_jitter.as_millis(),
            s.response_latency.as_millis(),
            s.response_jitter.as_millis(),
            p.body_bytes,
            backlogs.first().map_or(0, |b| b.plan.batching_window.as_millis()),
            feeds.first().map_or(0, |f| f.plan.batching_window.as_millis()),
        );
    }
    if !backlogs.is_empty() {
        let _ = writeln!(
            md,
            "| N | M | executions | messages / execution | T (s) | T* (s) | T*/T | steady window (s) | messages/s, steady | × r | executions/s, steady | M / T (/s) | throttled / calls | fallbacks | claims written / found | reported, redriven | enqueue→start p50 / p99 (s) | client CPU/msg (µs) |"
        );
        let _ = writeln!(
            md,
            "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &backlogs {
            let rate = r.plan.account.1;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {}{:.2} | {:.2} | {} | {} | {} | {} | {} | {:.0} | {} / {} | {} | {} / {} | {}, {} | {} / {} | {:.1} |",
                r.plan.per_execution,
                r.messages,
                r.executions,
                r.messages_per_execution(),
                if r.drained { "" } else { "> " },
                r.drain_seconds,
                r.ideal_seconds(),
                opt(r.efficiency(), 3),
                r.steady
                    .as_ref()
                    .map_or("—".to_string(), |s| format!("{:.2} – {:.2}", s.from, s.to)),
                opt(r.steady.as_ref().map(|s| s.messages_per_second), 0),
                opt(r.steady.as_ref().map(|s| s.messages_per_second / rate), 2),
                opt(r.steady.as_ref().map(|s| s.executions_per_second), 1),
                r.started as f64 / r.drain_seconds.max(1e-9),
                r.throttled,
                r.calls,
                r.report.fallbacks,
                r.report.claims_written,
                r.report.claims_found,
                r.report.failed,
                r.redriven,
                opt(r.latency(50.0), 2),
                opt(r.latency(99.0), 2),
                r.client_cpu_per_message_us(),
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "### The coordination table per message (backlogs)\n");
        let _ = writeln!(
            md,
            "Claim items: items written by claim transactions (N claims + 1 record each). Table calls: every call, budget \
             leases (reads and writes) included. WRU as DynamoDB bills them: a transaction 2 per KB per item (sizes with \
             36-character SQS message ids), a record's trim after its start (UpdateItem) 1 per KB of the record before it, \
             a budget write 1; RRU: 1 per strongly consistent read. Bytes kept: after the trims.\n"
        );
        let _ = writeln!(
            md,
            "| N | claim transactions | claim items / message | budget reads + writes (refused) | lease calls (reports) | dropped slots | table calls / message | WRU / message (claims + trims + leases) | RRU / message | bytes kept / message |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &backlogs {
            let per = |v: u64| stats::ratio(v, r.started);
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} | {} + {} ({}) | {} | {} | {:.3} | {:.3} ({:.3} + {:.3} + {:.3}) | {:.4} | {:.0} |",
                r.plan.per_execution,
                r.table.transactions,
                per(r.table.claim_items),
                r.table.budget_reads,
                r.table.budget_writes,
                r.table.refused_budget_writes,
                r.report.lease_calls,
                r.unused_slots(),
                per(r.table.calls),
                per(r.table.write_units()),
                per(r.table.transaction_write_units),
                per(r.table.confirm_write_units),
                per(r.table.budget_writes),
                per(r.table.read_units()),
                per(r.table.kept_bytes()),
            );
        }
        let _ = writeln!(md);
    }
    if !feeds.is_empty() {
        let _ = writeln!(md, "### Steady feed: enqueue → start\n");
        let _ = writeln!(
            md,
            "| N | offered (/s) | messages | executions | messages / execution | invocations | throttled / calls | claims found | enqueue→start p50 / p99 (ms) |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &feeds {
            let Load::Feed { per_second, .. } = r.plan.load else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} | {} | {} / {} | {} | {} / {} |",
                r.plan.per_execution,
                per_second,
                r.started,
                r.executions,
                r.messages_per_execution(),
                r.invocations,
                r.throttled,
                r.calls,
                r.report.claims_found,
                opt(r.latency(50.0).map(|v| v * 1e3), 0),
                opt(r.latency(99.0).map(|v| v * 1e3), 0),
            );
        }
        let _ = writeln!(md);
    }
    targets_table(md, runs);
    bill(md, &backlogs);
}

fn targets_table(md: &mut String, runs: &[BatchRun]) {
    use std::fmt::Write as _;
    let _ = writeln!(md, "### Targets\n");
    let _ = writeln!(md, "| measure | value | target | |");
    let _ = writeln!(md, "|---|---:|---|---|");
    for r in runs
        .iter()
        .filter(|r| r.plan.per_execution == 10 && matches!(r.plan.load, Load::Backlog { .. }))
    {
        let rate = r.plan.account.1;
        let multiple = r.steady.as_ref().map(|s| s.messages_per_second / rate);
        let _ = writeln!(
            md,
            "| steady messages/s at N = 10 / refill | {} | ≥ {} | {} |",
            opt(multiple, 2),
            targets::RATE_MULTIPLE_AT_10,
            pass(multiple.is_some_and(|m| m >= targets::RATE_MULTIPLE_AT_10))
        );
    }
    let throttled: u64 = runs.iter().map(|r| r.throttled).sum();
    let calls: u64 = runs.iter().map(|r| r.calls).sum();
    let _ = writeln!(
        md,
        "| throttles, every run | {throttled} of {calls} calls | 0 | {} |",
        pass(throttled == 0)
    );
    let found: u64 = runs.iter().map(|r| r.report.claims_found).sum();
    let _ = writeln!(md, "| claims found, every run | {found} | 0 | {} |", pass(found == 0));
    let fallbacks: u64 = runs.iter().map(|r| r.report.fallbacks).sum();
    let _ = writeln!(
        md,
        "| fallbacks, every run | {fallbacks} | 0 | {} |",
        pass(fallbacks == 0)
    );
    let _ = writeln!(md);
}

/// A billed quantity: whole units from 100 on, else three significant digits.
fn quantity(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.digits$}")
    }
}

/// The average arrival rate at which the table's steady size is stated, messages per second.
pub const STORAGE_RATE_PER_SECOND: f64 = 100.0;

fn bill(md: &mut String, backlogs: &[&BatchRun]) {
    use std::fmt::Write as _;
    if backlogs.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Cost per million messages (Standard, us-east-1, the backlog runs)\n"
    );
    let _ = writeln!(
        md,
        "Transitions: one per state entered, the sample state machines of `infra/` (N = 1: one Pass; N > 1: the Map \
         state plus one Pass per item). Lambda: arm64, {} MB, the measured billed duration. Storage: claims and records \
         kept {:.1} days (`Config::claim_ttl` with the template's queues: work queue 4 days + DLQ 14 days + 1 h), each \
         record trimmed to \"started\" once its execution's start is confirmed.\n",
        billing::LAMBDA_MEMORY_MB,
        backlogs[0].claim_ttl_seconds / 86_400.0
    );
    let mut header = "| item |".to_string();
    let mut rule = "|---|".to_string();
    for r in backlogs {
        let _ = write!(header, " N = {} | $ |", r.plan.per_execution);
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let bills: Vec<Vec<billing::Line>> = backlogs.iter().map(|r| billing::per_million(&r.usage())).collect();
    let lines = bills.first().map_or(0, Vec::len);
    for i in 0..lines {
        let mut row = format!("| {} ({}) |", bills[0][i].item, bills[0][i].unit);
        for b in &bills {
            let _ = write!(row, " {} | {:.3} |", quantity(b[i].quantity), b[i].usd);
        }
        let _ = writeln!(md, "{row}");
    }
    let mut total = "| **total** |".to_string();
    for b in &bills {
        let _ = write!(total, " | **{:.2}** |", b.iter().map(|l| l.usd).sum::<f64>());
    }
    let _ = writeln!(md, "{total}\n");
    let express: Vec<String> = backlogs
        .iter()
        .map(|r| {
            let (requests, duration) = billing::express_per_million(r.usage().executions, 0.1);
            format!("${:.3} at N = {}", requests + duration, r.plan.per_execution)
        })
        .collect();
    let _ = writeln!(
        md,
        "- Express instead (no transitions, no claims; each execution billed 100 ms at 64 MB): {} per million \
         messages for Step Functions.",
        express.join(", ")
    );
    for r in backlogs {
        let (after, before) = (r.usage(), r.usage_issue_12());
        if after.stored_bytes > 0.0 {
            let gb = |u: &Usage| billing::steady_table_gb(u.stored_bytes, STORAGE_RATE_PER_SECOND, u.retention_seconds);
            let _ = writeln!(
                md,
                "- N = {}: {:.0} bytes kept per message ({:.0} before trimming); at an average of \
                 {STORAGE_RATE_PER_SECOND} messages/s the table holds {:.1} GB of claims and records in steady state, \
                 ${:.2} a month (issue 12's rules: {:.1} GB, ${:.2}).",
                r.plan.per_execution,
                after.stored_bytes,
                before.stored_bytes,
                gb(&after),
                gb(&after) * billing::price::DYNAMODB_GB_MONTH_USD,
                gb(&before),
                gb(&before) * billing::price::DYNAMODB_GB_MONTH_USD,
            );
        }
    }
    let _ = writeln!(md);
    claims_before_after(md, backlogs);
}

/// The claims' storage and request units per million messages, under issue 12's rules (records
/// kept whole, 91 days) and now (records trimmed once started, kept as long as the queues can
/// deliver a message again): the same runs, billed both ways.
fn claims_before_after(md: &mut String, backlogs: &[&BatchRun]) {
    use std::fmt::Write as _;
    let claimed: Vec<&&BatchRun> = backlogs.iter().filter(|r| r.table.transactions > 0).collect();
    if claimed.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Claims per million messages, before and after (issue 18)\n\n\
         Before: issue 12's rules (records kept whole, 91 days). After: each record trimmed to \"started\" once its \
         execution's start is confirmed (one UpdateItem, billed at the record's size before), and everything kept \
         `Config::claim_ttl`. The same runs, billed both ways.\n\n\
         | N | body (bytes) | bytes kept / message, before / after | **storage (GB-months), before / after** | ratio | \
         WRU, before / after | RRU | DynamoDB $, before / after | **total $, before / after** |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let m = 1e6;
    for r in claimed {
        let (before, after) = (r.usage_issue_12(), r.usage());
        let gb = |u: &Usage| billing::gb_months(u.stored_bytes, u.retention_seconds) * m;
        let (bill_before, bill_after) = (billing::per_million(&before), billing::per_million(&after));
        let dynamodb =
            |b: &[billing::Line]| -> f64 { b.iter().filter(|l| l.item.starts_with("DynamoDB")).map(|l| l.usd).sum() };
        let total = |b: &[billing::Line]| -> f64 { b.iter().map(|l| l.usd).sum() };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} / {:.0} | **{} / {}** | {:.3} | {} / {} | {} | {:.3} / {:.3} | **{:.2} / {:.2}** |",
            r.plan.per_execution,
            r.plan.body_bytes,
            before.stored_bytes,
            after.stored_bytes,
            quantity(gb(&before)),
            quantity(gb(&after)),
            gb(&after) / gb(&before).max(f64::MIN_POSITIVE),
            quantity(before.write_units * m),
            quantity(after.write_units * m),
            quantity(after.read_units * m),
            dynamodb(&bill_before),
            dynamodb(&bill_after),
            total(&bill_before),
            total(&bill_after),
        );
    }
    let _ = writeln!(md);
}

fn table_json(t: &TableCounts) -> Value {
    json!({
        "calls": t.calls, "budget_reads": t.budget_reads,
        "budget_writes": t.budget_writes, "transactions": t.transactions,
        "refused_transactions": t.refused_transactions, "claim_items": t.claim_items,
        "claim_reads": t.claim_reads, "claim_read_keys": t.claim_read_keys,
        "record_reads": t.record_reads, "record_read_units": t.record_read_units,
        "transaction_write_units": t.transaction_write_units,
        "write_units": t.write_units(), "read_units": t.read_units(),
        "stored_bytes": t.stored_bytes, "refused_budget_writes": t.refused_budget_writes,
        "confirms": t.confirms, "confirm_write_units": t.confirm_write_units, "trimmed_bytes": t.trimmed_bytes,
    })
}

fn bill_json(u: &Usage) -> Value {
    let lines = billing::per_million(u)
        .iter()
        .map(|l| json!({"item": l.item, "quantity": l.quantity, "unit": l.unit, "usd": l.usd}))
        .collect();
    Value::Array(lines)
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "executions": u.executions, "transitions": u.transitions,
        "write_units": u.write_units, "read_units": u.read_units,
        "lambda_requests": u.lambda_requests, "lambda_gb_seconds": u.lambda_gb_seconds,
        "stored_bytes": u.stored_bytes, "retention_seconds": u.retention_seconds,
    })
}

fn plan_json(p: &Plan) -> Value {
    let (load, per_second, seconds) = match p.load {
        Load::Backlog { .. } => ("backlog", None, None),
        Load::Feed { per_second, seconds } => ("feed", Some(per_second), Some(seconds)),
    };
    json!({
        "messages_per_execution": p.per_execution, "instances": p.instances,
        "batch_size": p.batch_size, "batching_window_ms": p.batching_window.as_millis() as u64,
        "burst": p.account.0, "refill_per_second": p.account.1, "body_bytes": p.body_bytes,
        "load": load, "feed_per_second": per_second, "feed_seconds": seconds,
    })
}

fn counts_json(r: &BatchRun) -> Value {
    json!({
        "calls": r.calls, "throttled": r.throttled, "fallbacks": r.report.fallbacks,
        "claims_written": r.report.claims_written, "claims_found": r.report.claims_found,
        "lease_calls": r.report.lease_calls, "reported": r.report.failed,
        "report_started": r.report.started, "report_executions": r.report.executions,
        "redriven": r.redriven, "dead_lettered": r.dead_lettered, "unused_slots": r.unused_slots(),
        "invocations": r.invocations, "billed_lambda_seconds": r.billed_seconds,
        "transitions": r.transitions,
    })
}

/// The section's JSON.
pub fn json(runs: &[BatchRun]) -> Value {
    Value::Array(
        runs.iter()
            .map(|r| {
                let usage = r.usage();
                json!({
                    "plan": plan_json(&r.plan),
                    "messages": r.messages, "started": r.started, "executions": r.executions,
                    "messages_per_execution": r.messages_per_execution(),
                    "drain_seconds": r.drain_seconds, "drained": r.drained, "ideal_seconds": r.ideal_seconds(),
                    "efficiency": r.efficiency(),
                    "steady": r.steady.as_ref().map(|s| json!({
                        "from_seconds": s.from, "to_seconds": s.to,
                        "messages_per_second": s.messages_per_second,
                        "executions_per_second": s.executions_per_second,
                        "multiple_of_refill": s.messages_per_second / r.plan.account.1,
                    })),
                    "counts": counts_json(r),
                    "table": table_json(&r.table),
                    "enqueue_to_start_p50_seconds": r.latency(50.0),
                    "enqueue_to_start_p99_seconds": r.latency(99.0),
                    "usage_per_message": usage_json(&usage),
                    "per_million_usd": bill_json(&usage),
                    "usage_per_message_issue_12": usage_json(&r.usage_issue_12()),
                    "per_million_usd_issue_12": bill_json(&r.usage_issue_12()),
                    "client_cpu_per_message_us": r.client_cpu_per_message_us(),
                    "messages_per_second": r.messages_per_second,
                    "executions_per_second": r.executions_per_second,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use local_stack::sim::DEFAULT_BATCHING_WINDOW;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn bodies_have_the_size_asked_and_are_json() {
        for i in [0, 7, 12_345_678] {
            let b = body(i, 200);
            assert_eq!(b.len(), 200, "{b}");
            let v: Value = serde_json::from_str(&b).unwrap();
            assert!(v.get("items").is_none());
        }
        assert_ne!(body(1, 200), body(2, 200));
        let small = body(3, 10);
        assert!(
            serde_json::from_str::<Value>(&small).is_ok(),
            "never shorter than its fields"
        );
    }

    #[test]
    fn plans_size_the_backlog_in_executions_and_skip_feeds_beyond_the_quota() {
        let shape = Shape {
            instances: 10,
            batch_size: 100,
            account: (1300, 300.0),
            ideal_seconds: 10.0,
            body_bytes: 200,
            feeds: vec![250.0, 2400.0],
            feed_seconds: 10.0,
            feed_window: Duration::from_secs(1),
            backlog_window: DEFAULT_BATCHING_WINDOW,
        };
        let p = plans(&[1, 10, 25], &shape);
        let loads: Vec<(usize, Load)> = p.iter().map(|p| (p.per_execution, p.load)).collect();
        let feed = |per_second| Load::Feed {
            per_second,
            seconds: 10.0,
        };
        assert_eq!(
            loads,
            vec![
                (1, Load::Backlog { messages: 4300 }),
                (1, feed(250.0)),
                (10, Load::Backlog { messages: 43_000 }),
                (10, feed(250.0)),
                (10, feed(2400.0)),
                (25, Load::Backlog { messages: 107_500 }),
                (25, feed(250.0)),
                (25, feed(2400.0)),
            ],
            "N = 1 cannot sustain 2,400/s (0.9 × 300)"
        );
        assert_eq!(p[0].batching_window, DEFAULT_BATCHING_WINDOW);
        assert_eq!(p[1].batching_window, Duration::from_secs(1));
        assert_eq!(p[4].messages(), 24_000);
    }

    #[test]
    fn the_steady_window_starts_once_a_second_holds_no_more_than_the_refill() {
        // 1,420 starts in the first 0.5 s (the burst and its refill), then 300/s until 10 s.
        let mut t: Vec<Duration> = (0..1420).map(|i| Duration::from_micros(i * 350)).collect();
        t.extend((1..=2850).map(|i| ms(500) + Duration::from_secs_f64(i as f64 / 300.0)));
        let (from, to) = steady_window(&t, 300.0).unwrap();
        // [0.5, 1.5) is the first window without burst in it.
        assert_eq!(from, ms(500));
        assert_eq!(to, *t.last().unwrap() - ms(500));
        let rate = stats::rate_in(&t, from, to);
        assert!((rate - 300.0).abs() < 1.0, "{rate}");
        // A run slower than the refill is steady from the start.
        let slow: Vec<Duration> = (0..100).map(|i| ms(i * 100)).collect();
        assert_eq!(steady_window(&slow, 300.0), Some((Duration::ZERO, ms(9400))));
        // Too short, or nothing: none.
        assert_eq!(steady_window(&t[..1500], 300.0), None);
        assert_eq!(steady_window(&[], 300.0), None);
    }

    #[test]
    fn an_execution_carries_its_items_or_its_name() {
        let input = r#"{"items":[{"messageId":"msg-1","body":{"a":1}},{"messageId":"msg-2","body":"x"}]}"#;
        assert_eq!(carried(10, "batch-2-abc", input), vec!["msg-1", "msg-2"]);
        assert_eq!(carried(1, "msg-7", r#"{"items":[1,2]}"#), vec!["msg-7"]);
        assert!(carried(10, "x", "not json").is_empty());
    }

    #[test]
    fn quantities_keep_three_significant_digits_below_100() {
        assert_eq!(quantity(1_100_000.4), "1100000");
        assert_eq!(quantity(1.366), "1.37");
        assert_eq!(quantity(0.012_34), "0.0123");
        assert_eq!(quantity(57.5), "57.5");
        assert_eq!(quantity(0.0), "0");
    }

    #[test]
    fn table_units_add_the_transactions_and_the_leases() {
        let t = TableCounts {
            budget_reads: 3,
            budget_writes: 40,
            transactions: 100,
            claim_items: 1_100,
            transaction_write_units: 2_600,
            claim_read_keys: 0,
            record_reads: 1,
            record_read_units: 2,
            ..TableCounts::default()
        };
        assert_eq!(t.write_units(), 2_640);
        assert_eq!(t.read_units(), 5);
    }
}
