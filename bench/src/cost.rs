//! Cost per message: the handler's CPU with the network stubbed out (a StartExecution that
//! returns at once, no pacing waits), on one thread, plus instruction counts under callgrind.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use sfn_pacer::close::dead_letter::DeadLetter;
use sfn_pacer::close::queue::{Queue, QueueError};
use sfn_pacer::dispatch;
use sfn_pacer::start::StartExecution;
use sfn_pacer::Starter;

use local_stack::fake_sfn::{FakeSfn, FakeSfnHandle};
use sfn_pacer::aws::SfnStarter;

use crate::common::{body, config, sdk_config, BenchError, InstantStart, Runtimes, SERVER_THREAD};
use crate::cpu;
use crate::stats;

/// Records per batch, as the mapping sends them.
pub const BATCH: usize = 10;

/// A queue whose calls succeed without doing anything (no call is expected here).
struct NullQueue;

#[async_trait]
impl Queue for NullQueue {
    async fn change_visibility(&self, _: &str, _: &str, _: u32) -> Result<(), QueueError> {
        Ok(())
    }
    async fn send_dead_letter(&self, _: &str, _: &DeadLetter) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Handler CPU per message.
#[derive(Debug, Clone)]
pub struct CostResult {
    /// Messages per round (after a warm-up of as many).
    pub messages: u64,
    /// `Starter::process` only (events already decoded), µs of CPU per message.
    pub process_us: f64,
    /// Decoding the invocation's JSON into an `SqsEvent`, `process`, and encoding the
    /// response (what the runtime adds per invocation), µs of CPU per message.
    pub end_to_end_us: f64,
    /// Wall time per message of the end-to-end loop, µs.
    pub end_to_end_wall_us: f64,
}

/// The JSON of an SQS event with `n` records starting at message `first`, as Lambda sends it.
pub fn event_json(first: u64, n: usize) -> String {
    let records: Vec<serde_json::Value> = (0..n as u64)
        .map(|k| {
            let i = first + k;
            serde_json::json!({
                "messageId": format!("{:08x}-7c1b-4e4f-9a52-{:012x}", i, i * 7919),
                "receiptHandle": format!("AQEB{}", "x".repeat(120)),
                "body": body(i),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1700000000000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1700000000001"
                },
                "messageAttributes": {},
                "md5OfBody": "0123456789abcdef0123456789abcdef",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::json!({ "Records": records }).to_string()
}

/// A starter without pacing waits, calling `sfn` (the stub by default).
fn starter_with(sfn: Option<Arc<dyn StartExecution>>) -> Result<Starter, BenchError> {
    let cfg = config(&[
        ("STARTS_PER_SECOND", "1000000000000".to_string()),
        ("STARTS_BURST", "1000000000000".to_string()),
        ("MAX_CONCURRENCY", "1".to_string()),
    ])?;
    let sfn = sfn.unwrap_or_else(|| Arc::new(InstantStart::new(false)));
    Ok(Starter::new(cfg, sfn, Arc::new(NullQueue)))
}

fn starter() -> Result<Starter, BenchError> {
    starter_with(None)
}

/// A deadline far in the future, epoch ms.
fn deadline_ms() -> u64 {
    sfn_pacer::handler::now_epoch_ms() + 600_000
}

/// Decodes, processes and encodes `events` (JSON texts) as the function does
/// ([`sfn_pacer::dispatch`]: the runtime's JSON tree, told apart by its shape, then the batch;
/// the response back through a tree); returns the messages started.
async fn end_to_end(starter: &Starter, events: &[String]) -> Result<u64, BenchError> {
    let mut started = 0;
    for json in events {
        let payload: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("decoding an event: {e}"))?;
        if dispatch::kind(&payload) != dispatch::Kind::Batch {
            return Err("the event is no SQS batch".into());
        }
        let event: SqsEvent = serde_json::from_value(payload).map_err(|e| format!("decoding a batch: {e}"))?;
        let outcome = starter
            .process(event, deadline_ms())
            .await
            .map_err(|e| format!("the handler rejected the event: {e}"))?;
        let response: &SqsBatchResponse = &outcome.response;
        if !response.batch_item_failures.is_empty() {
            return Err(format!(
                "{} messages failed with a stub that cannot fail",
                response.batch_item_failures.len()
            )
            .into());
        }
        let answer = serde_json::to_value(response).map_err(|e| format!("encoding a response: {e}"))?;
        let encoded = serde_json::to_vec(&answer).map_err(|e| format!("encoding a response: {e}"))?;
        std::hint::black_box(encoded);
        started += outcome.report.received as u64;
    }
    Ok(started)
}

fn current_thread() -> Result<tokio::runtime::Runtime, BenchError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building a runtime: {e}"))?)
}

/// Rounds of each CPU measurement; the median is reported (the machine is shared).
pub const ROUNDS: usize = 5;

/// Batches decoded at a time before `process` is timed on them.
const PROCESS_CHUNK: usize = 20;

/// Measures `messages` messages (rounded up to whole batches) after a warm-up of as many,
/// [`ROUNDS`] times for each figure; reports the medians.
pub fn measure(messages: u64) -> Result<CostResult, BenchError> {
    let batches = messages.div_ceil(BATCH as u64).max(1);
    let messages = batches * BATCH as u64;
    let events: Vec<String> = (0..batches).map(|b| event_json(b * BATCH as u64, BATCH)).collect();
    let rt = current_thread()?;
    rt.block_on(async {
        let starter = starter()?;
        // Warm-up: allocator, lazy statics, branch predictors.
        end_to_end(&starter, &events).await?;
        let (mut process_us, mut full_us, mut wall_us) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            // Decode a chunk, then time `process` on it while it is still in cache (decoding
            // everything first would time cache misses, not the handler).
            let mut process = Duration::ZERO;
            for chunk in events.chunks(PROCESS_CHUNK) {
                let decoded: Vec<SqsEvent> = chunk
                    .iter()
                    .map(|j| serde_json::from_str(j))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("decoding an event: {e}"))?;
                let before = cpu::thread_cpu()?;
                for event in decoded {
                    let outcome = starter
                        .process(event, deadline_ms())
                        .await
                        .map_err(|e| format!("the handler rejected the event: {e}"))?;
                    std::hint::black_box(outcome);
                }
                process += cpu::thread_cpu()?.saturating_sub(before);
            }
            process_us.push(stats::micros_per(process, messages));

            let before = cpu::thread_cpu()?;
            let wall = Instant::now();
            let started = end_to_end(&starter, &events).await?;
            wall_us.push(stats::micros_per(wall.elapsed(), messages));
            full_us.push(stats::micros_per(cpu::thread_cpu()?.saturating_sub(before), messages));
            if started != messages {
                return Err(format!("expected {messages} messages processed, got {started}").into());
            }
        }
        let median = |v: &[f64]| stats::median(v).unwrap_or(f64::NAN);
        Ok(CostResult {
            messages,
            process_us: median(&process_us),
            end_to_end_us: median(&full_us),
            end_to_end_wall_us: median(&wall_us),
        })
    })
}

/// Distinct batches the callgrind probe cycles through: built once, so building them is a
/// fixed cost that cancels out between the two runs.
const PROBE_BATCHES: u64 = 50;

/// The callgrind probe: decodes, processes and encodes `messages` messages (cycling through
/// [`PROBE_BATCHES`] prebuilt batches), no warm-up, no output. Run under valgrind twice with
/// different counts; the difference is per message.
pub fn probe(messages: u64) -> Result<(), BenchError> {
    let batches = messages.div_ceil(BATCH as u64);
    let distinct: Vec<String> = (0..PROBE_BATCHES)
        .map(|b| event_json(b * BATCH as u64, BATCH))
        .collect();
    let rt = current_thread()?;
    rt.block_on(async {
        let starter = starter()?;
        for round in 0..batches.div_ceil(PROBE_BATCHES) {
            let take = (batches - round * PROBE_BATCHES).min(PROBE_BATCHES) as usize;
            end_to_end(&starter, &distinct[..take]).await?;
        }
        Ok(())
    })
}

/// Instructions per message under callgrind.
#[derive(Debug, Clone)]
pub struct InstructionCount {
    /// (Ir(n2) − Ir(n1)) / (n2 − n1): the end-to-end cost of one more message, instructions.
    pub per_message: f64,
    /// The message counts of the two runs.
    pub runs: (u64, u64),
}

fn callgrind_ir(exe: &std::path::Path, messages: u64) -> Result<u64, BenchError> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .args(["cost-probe", "--messages", &messages.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("running valgrind: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "valgrind failed ({}): {}",
            out.status,
            stderr.lines().last().unwrap_or("")
        )
        .into());
    }
    // "==1234== Collected : 123456789"
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "valgrind printed no \"Collected :\" line".into())
}

/// Counts instructions per message with `valgrind --tool=callgrind` on this executable's
/// `cost-probe` mode, at `n1` and `n2` messages. Bounded by valgrind's own run (seconds).
pub fn instructions(n1: u64, n2: u64) -> Result<InstructionCount, BenchError> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let started = Instant::now();
    let a = callgrind_ir(&exe, n1)?;
    let b = callgrind_ir(&exe, n2)?;
    if started.elapsed() > Duration::from_secs(120) {
        eprintln!("note: callgrind took {:?}", started.elapsed());
    }
    Ok(InstructionCount {
        per_message: (b as f64 - a as f64) / (n2 - n1) as f64,
        runs: (n1, n2),
    })
}

/// Handler plus the real SDK client, per message.
#[derive(Debug, Clone)]
pub struct SdkCostResult {
    /// Messages measured (after a warm-up).
    pub messages: u64,
    /// CPU of the thread running the handler and the SDK (a current-thread runtime), µs per message.
    pub thread_us: f64,
    /// CPU of the whole process less the fake endpoint's thread, µs per message (adds any
    /// helper thread the SDK uses).
    pub process_us: f64,
}

/// Decodes, processes and encodes `messages` messages with the real `aws-sdk-sfn` client
/// (SigV4, HTTP/1.1 over loopback) against the fake endpoint without quota or latency.
pub fn measure_sdk(runtimes: &Runtimes, messages: u64) -> Result<SdkCostResult, BenchError> {
    let batches = messages.div_ceil(BATCH as u64).max(1);
    let messages = batches * BATCH as u64;
    // Distinct message ids (so distinct executions) for the warm-up and the measured part.
    let warm: Vec<String> = (0..batches)
        .map(|b| event_json(10_000_000 + b * BATCH as u64, BATCH))
        .collect();
    let events: Vec<String> = (0..batches).map(|b| event_json(b * BATCH as u64, BATCH)).collect();
    let sfn: FakeSfnHandle = runtimes
        .server
        .block_on(FakeSfn::builder().start())
        .map_err(|e| format!("starting the fake Step Functions endpoint: {e}"))?;
    let rt = current_thread()?;
    let result = rt.block_on(async {
        let sdk = sdk_config(&sfn.endpoint()).await;
        let client: Arc<dyn StartExecution> = Arc::new(SfnStarter::new(&sdk, Duration::from_secs(2)));
        let starter = starter_with(Some(client))?;
        end_to_end(&starter, &warm).await?;
        let thread_before = cpu::thread_cpu()?;
        let process_before = cpu::process_cpu()?;
        let server_before = cpu::named_threads_cpu(SERVER_THREAD)?;
        let started = end_to_end(&starter, &events).await?;
        let thread = cpu::thread_cpu()?.saturating_sub(thread_before);
        let process = cpu::process_cpu()?.saturating_sub(process_before);
        let server = cpu::named_threads_cpu(SERVER_THREAD)?.saturating_sub(server_before);
        if started != messages {
            return Err(format!("expected {messages} messages processed, got {started}").into());
        }
        Ok(SdkCostResult {
            messages,
            thread_us: stats::micros_per(thread, messages),
            process_us: stats::micros_per(process.saturating_sub(server), messages),
        })
    });
    runtimes.server.block_on(sfn.shutdown());
    result
}
