//! The final report of `sfn-pacer-demo run`: printed as text, optionally written as JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::accounting::Accounting;
use crate::emf::FunctionTotals;
use local_stack::process::ProcessRecord;

/// The parameters of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    /// Messages generated.
    pub messages: u64,
    /// Fraction of bad messages.
    pub bad_share: f64,
    /// The generator's seed.
    pub seed: u64,
    /// Global starts per second (`STARTS_PER_SECOND`).
    pub rate: f64,
    /// Global burst (`STARTS_BURST`).
    pub burst: f64,
    /// Instances sharing the budget (`MAX_CONCURRENCY`, the ESM's MaximumConcurrency).
    pub max_concurrency: u32,
    /// The ESM's batch size.
    pub batch_size: u16,
    /// The producer's pace, messages per second.
    pub produce_rate: f64,
    /// The queue's maxReceiveCount.
    pub max_receive_count: u32,
    /// The hard bound of the run, seconds.
    pub max_seconds: f64,
}

/// Timings and rates.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timing {
    /// From the producer's start until the queue was found empty (or the bound), seconds.
    pub drain_seconds: f64,
    /// The producer's own sending time, seconds.
    pub producer_seconds: Option<f64>,
    /// The whole demo, setup and teardown included, seconds.
    pub total_seconds: f64,
    /// The target starts per second.
    pub target_rate: f64,
    /// Executions started ÷ drain time.
    pub achieved_rate: f64,
    /// `achieved_rate` in percent of the target.
    pub achieved_percent: f64,
    /// The highest rate over any 5-second window (the function's counts).
    pub peak_rate_5s: f64,
    /// The shortest drain possible at this producer pace, rate and burst, seconds.
    pub drain_bound_seconds: f64,
    /// The deepest the work queue got (visible + in flight), messages.
    pub max_queue_depth: u64,
    /// How long the producer was held back because the queue was deep, seconds.
    pub producer_held_seconds: f64,
}

/// Everything `run` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Exit status 0: drained in time, producer and processes fine, every message accounted for.
    pub ok: bool,
    /// Every message is accounted for.
    pub accounted: bool,
    /// What went wrong, one sentence each.
    pub problems: Vec<String>,
    /// The parameters.
    pub parameters: Parameters,
    /// Messages the producer sent (from its summary), `None` if it gave none.
    pub sent: Option<u64>,
    /// Messages the producer could not send.
    pub not_sent: Option<u64>,
    /// Executions started, counted in moto with ListExecutions.
    pub executions_in_moto: u64,
    /// The verdict per message.
    pub accounting: Accounting,
    /// The function's EMF counts, summed.
    pub function: FunctionTotals,
    /// Timings and rates.
    pub timing: Timing,
    /// Whether the queue drained before `--max-seconds`.
    pub drained: bool,
    /// The producer's summary line.
    pub producer: Option<Value>,
    /// local-esm's summary line.
    pub esm: Option<Value>,
    /// Every process the demo started, with how it ended.
    pub processes: Vec<ProcessRecord>,
    /// Where the logs are.
    pub log_dir: PathBuf,
}

impl Report {
    /// The report as text.
    pub fn render(&self) -> String {
        let p = &self.parameters;
        let a = &self.accounting;
        let t = &self.timing;
        let f = &self.function;
        let mut s = String::new();
        let _ = writeln!(s, "sfn-pacer demo report");
        let _ = writeln!(
            s,
            "  parameters         {} messages ({} bad), target {:.0} starts/s, burst {:.0}, {} instances, batch {}, produced at {:.0}/s",
            p.messages, a.bad, p.rate, p.burst, p.max_concurrency, p.batch_size, p.produce_rate
        );
        let sent = match (self.sent, self.not_sent) {
            (Some(sent), Some(0) | None) => format!("{sent}"),
            (Some(sent), Some(not)) => format!("{sent} ({not} NOT sent)"),
            (None, _) => "unknown (no producer summary)".to_string(),
        };
        let producer_time = t
            .producer_seconds
            .map_or_else(String::new, |sec| format!(" in {sec:.1} s"));
        let held = if t.producer_held_seconds > 0.0 {
            format!(
                " (held back {:.1} s while more than --max-queue-depth were outstanding)",
                t.producer_held_seconds
            )
        } else {
            String::new()
        };
        let _ = writeln!(s, "  messages sent      {sent}{producer_time}{held}");
        let _ = writeln!(
            s,
            "  executions         {} started (counted in moto with ListExecutions); {} of {} good messages have exactly one",
            self.executions_in_moto, a.good_started_once, a.good
        );
        let restarts = f.counts.started.saturating_sub(self.executions_in_moto);
        let _ = writeln!(
            s,
            "  duplicates         {} ExecutionAlreadyExists (EMF Duplicates, summed over {} invocations); \
             {restarts} idempotent re-start(s) of a running execution (EMF Started {} - {} in moto)",
            f.counts.duplicates, f.invocations, f.counts.started, self.executions_in_moto
        );
        if let (Some(records), Some(sent)) = (
            self.esm.as_ref().and_then(|v| v.get("records")).and_then(Value::as_u64),
            self.sent,
        ) {
            let _ = writeln!(
                s,
                "  deliveries         {records} records for {sent} messages (local-esm): {} redelivered (SQS delivers at least once)",
                records.saturating_sub(sent)
            );
        }
        let mut reasons: Vec<String> = a.reasons.iter().map(|(code, n)| format!("{code} x{n}")).collect();
        if a.redriven > 0 {
            reasons.push(format!("redriven after maxReceiveCount (no reason) x{}", a.redriven));
        }
        let reasons = if reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", reasons.join(", "))
        };
        let _ = writeln!(
            s,
            "  DLQ                {} message(s){reasons}; {} of {} bad messages are there",
            a.dlq_depth, a.bad_in_dlq, a.bad
        );
        let _ = writeln!(
            s,
            "  function           started {}, retried {}, throttled {}, failed (batchItemFailures) {}, dead-lettered {}",
            f.counts.started, f.counts.retried, f.counts.throttled, f.counts.failed, f.counts.dead_lettered
        );
        let drained = if self.drained {
            ""
        } else {
            " (NOT drained: --max-seconds reached)"
        };
        let _ = writeln!(
            s,
            "  drain time         {:.1} s{drained} (shortest possible at this pace: {:.1} s)",
            t.drain_seconds, t.drain_bound_seconds
        );
        let _ = writeln!(
            s,
            "  start rate         {:.1}/s achieved vs {:.0}/s target ({:.0} %); peak over 5 s {:.1}/s; deepest queue {}",
            t.achieved_rate, t.target_rate, t.achieved_percent, t.peak_rate_5s, t.max_queue_depth
        );
        let _ = writeln!(
            s,
            "  total time         {:.1} s (setup and teardown included)",
            t.total_seconds
        );
        let _ = writeln!(s, "  logs               {}", self.log_dir.display());
        if self.ok {
            let _ = writeln!(
                s,
                "  result             OK: every good message has exactly one execution, every bad one is in the DLQ"
            );
        } else {
            let _ = writeln!(s, "  result             FAILED");
            for problem in &self.problems {
                let _ = writeln!(s, "    - {problem}");
            }
        }
        s
    }
}
