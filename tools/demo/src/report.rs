//! The final report of `sfn-pacer-demo run`: printed as text, optionally written as JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::accounting::{Accounting, Shape};
use crate::emf::FunctionTotals;
use crate::rate;
use local_stack::process::ProcessRecord;

/// The parameters of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    /// Messages generated, over every deployment.
    pub messages: u64,
    /// Fraction of bad messages.
    pub bad_share: f64,
    /// The generator's seed.
    pub seed: u64,
    /// The global budget, starts per second.
    pub rate: f64,
    /// The global burst, starts.
    pub burst: f64,
    /// Deployments sharing the budget.
    pub deployments: u32,
    /// The coordination table (`COORDINATION_TABLE`); `None`: the static split.
    pub coordination_table: Option<String>,
    /// The budget's key in that table (`QUOTA_KEY`).
    pub quota_key: Option<String>,
    /// What each deployment is told: `STARTS_PER_SECOND`.
    pub told_rate: f64,
    /// What each deployment is told: `STARTS_BURST`.
    pub told_burst: f64,
    /// Instances of each deployment (`MAX_CONCURRENCY`, its ESM's MaximumConcurrency).
    pub max_concurrency: u32,
    /// The ESM's batch size.
    pub batch_size: u16,
    /// `MESSAGES_PER_EXECUTION`: messages one execution carries at most (1: one each).
    pub messages_per_execution: u32,
    /// The producers' pace, messages per second, summed.
    pub produce_rate: f64,
    /// The queues' maxReceiveCount.
    pub max_receive_count: u32,
    /// The hard bound of the run, seconds.
    pub max_seconds: f64,
}

/// What one deployment did.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentReport {
    /// Its name (`a`, `b`).
    pub name: String,
    /// Its function's name at the invoke endpoint.
    pub function_name: String,
    /// Messages its producer sent (from its summary), `None` if it gave none.
    pub sent: Option<u64>,
    /// Messages its producer could not send.
    pub not_sent: Option<u64>,
    /// Executions of its state machine, counted in moto with ListExecutions.
    pub executions_in_moto: u64,
    /// The verdict per message.
    pub accounting: Accounting,
    /// Its function's EMF counts, summed.
    pub function: FunctionTotals,
    /// Its executions ÷ the drain time.
    pub achieved_rate: f64,
    /// Its messages and executions per second.
    pub throughput: Throughput,
    /// How long its producer was held back because its queue was deep, seconds.
    pub producer_held_seconds: f64,
    /// Its producer's summary line.
    pub producer: Option<Value>,
    /// Its local-esm's summary line.
    pub esm: Option<Value>,
}

/// Messages and executions per second (both counted in moto, over the drain time), against the
/// budget's refill: in batch mode one start carries several messages, so messages may go
/// faster than the refill while the starts stay within it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// Messages the executions carry.
    pub messages: u64,
    /// Executions.
    pub executions: u64,
    /// `messages` ÷ the drain time, per second.
    pub message_rate: f64,
    /// `executions` ÷ the drain time, per second.
    pub execution_rate: f64,
    /// `messages` ÷ `executions`.
    pub messages_per_execution: f64,
    /// The budget's refill, starts per second.
    pub refill: f64,
    /// `message_rate` ÷ `refill`.
    pub refill_multiple: f64,
}

impl Throughput {
    /// `messages` carried by `executions` over `drain_seconds`, against a refill of `refill` per second.
    pub fn new(messages: u64, executions: u64, drain_seconds: f64, refill: f64) -> Throughput {
        let message_rate = rate::per_second(messages, drain_seconds);
        Throughput {
            messages,
            executions,
            message_rate,
            execution_rate: rate::per_second(executions, drain_seconds),
            messages_per_execution: if executions > 0 {
                messages as f64 / executions as f64
            } else {
                0.0
            },
            refill,
            refill_multiple: if refill > 0.0 { message_rate / refill } else { 0.0 },
        }
    }

    /// "messages 812.0/s = 8.1x the refill of 100/s; executions 81.2/s, 10.0 messages per execution".
    pub fn text(&self) -> String {
        format!(
            "messages {:.1}/s = {:.1}x the refill of {:.0}/s; executions {:.1}/s, {:.1} messages per execution",
            self.message_rate, self.refill_multiple, self.refill, self.execution_rate, self.messages_per_execution
        )
    }
}

/// The budget check: the sum of the deployments' starts against the budget.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Budget {
    /// The budget, starts per second.
    pub rate: f64,
    /// Executions started by every deployment ÷ the drain time.
    pub achieved_rate: f64,
    /// `achieved_rate` in percent of the budget.
    pub achieved_percent: f64,
    /// The highest sum over any 5-second window, from the executions' start times in moto.
    pub peak_rate_5s: f64,
    /// The most `peak_rate_5s` may be: [`rate::budget_limit`].
    pub limit: f64,
    /// `peak_rate_5s ≤ limit`.
    pub within: bool,
}

impl Budget {
    /// The check of `executions` started (in all) over `drain_seconds`, peaking at `peak_rate_5s`.
    pub fn check(rate: f64, burst: f64, executions: u64, drain_seconds: f64, peak_rate_5s: f64) -> Budget {
        let achieved_rate = rate::per_second(executions, drain_seconds);
        let limit = rate::budget_limit(rate, burst);
        Budget {
            rate,
            achieved_rate,
            achieved_percent: rate::percent(achieved_rate, rate),
            peak_rate_5s,
            limit,
            within: peak_rate_5s <= limit,
        }
    }
}

/// Timings.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timing {
    /// From the producers' start until every queue was found empty (or the bound), seconds.
    pub drain_seconds: f64,
    /// The slowest producer's own sending time, seconds.
    pub producer_seconds: Option<f64>,
    /// The whole demo, setup and teardown included, seconds.
    pub total_seconds: f64,
    /// The shortest drain possible at this producer pace, rate and burst, seconds.
    pub drain_bound_seconds: f64,
    /// The deepest the work queues got together (visible + in flight), messages.
    pub max_queue_depth: u64,
}

/// Everything `run` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Exit status 0: drained in time, producers and processes fine, every message accounted
    /// for in every deployment, and the sum of the starts within the budget.
    pub ok: bool,
    /// Every message of every deployment is accounted for.
    pub accounted: bool,
    /// What went wrong, one sentence each.
    pub problems: Vec<String>,
    /// The parameters.
    pub parameters: Parameters,
    /// Each deployment.
    pub deployments: Vec<DeploymentReport>,
    /// The functions' EMF counts, summed over the deployments.
    pub function: FunctionTotals,
    /// Messages and executions per second, summed over the deployments.
    pub throughput: Throughput,
    /// The sum of the starts against the budget.
    pub budget: Budget,
    /// Timings.
    pub timing: Timing,
    /// Whether every queue drained before `--max-seconds`.
    pub drained: bool,
    /// Every process the demo started, with how it ended.
    pub processes: Vec<ProcessRecord>,
    /// Where the logs are.
    pub log_dir: PathBuf,
    /// The cap on running executions (`--max-running`).
    pub cap: Option<crate::cap::CapReport>,
}

/// Appends one line of the report: a label column, then the text.
fn line(s: &mut String, indent: usize, label: &str, text: &str) {
    let width = 21 - indent;
    let _ = writeln!(s, "{:indent$}{label:<width$}{text}", "");
}

impl DeploymentReport {
    fn render_into(&self, s: &mut String) {
        let a = &self.accounting;
        let f = &self.function;
        line(
            s,
            2,
            &format!("deployment {}", self.name),
            &format!(
                "function {}, {} messages ({} bad)",
                self.function_name,
                a.good + a.bad,
                a.bad
            ),
        );
        let sent = match (self.sent, self.not_sent) {
            (Some(sent), Some(0) | None) => format!("{sent}"),
            (Some(sent), Some(not)) => format!("{sent} ({not} NOT sent)"),
            (None, _) => "unknown (no producer summary)".to_string(),
        };
        let producer_time = self
            .producer
            .as_ref()
            .and_then(|v| v.get("elapsed_seconds"))
            .and_then(Value::as_f64)
            .map_or_else(String::new, |sec| format!(" in {sec:.1} s"));
        let held = if self.producer_held_seconds > 0.0 {
            format!(
                " (held back {:.1} s while more than --max-queue-depth were outstanding)",
                self.producer_held_seconds
            )
        } else {
            String::new()
        };
        line(s, 4, "messages sent", &format!("{sent}{producer_time}{held}"));
        match a.shape {
            Shape::Single => {
                line(
                    s,
                    4,
                    "executions",
                    &format!(
                        "{} started (counted in moto with ListExecutions); {} of {} good messages have exactly one",
                        self.executions_in_moto, a.good_started_once, a.good
                    ),
                );
                let restarts = f.counts.started.saturating_sub(self.executions_in_moto);
                line(
                    s,
                    4,
                    "duplicates",
                    &format!(
                        "{} ExecutionAlreadyExists (EMF Duplicates, summed over {} invocations); {restarts} \
                         idempotent re-start(s) of a running execution (EMF Started {} - {} in moto)",
                        f.counts.duplicates, f.invocations, f.counts.started, self.executions_in_moto
                    ),
                );
            }
            Shape::Batch => {
                line(
                    s,
                    4,
                    "executions",
                    &format!(
                        "{} started (counted in moto with ListExecutions), carrying {} messages (at most {} in one); \
                         {} of {} good messages are in exactly one execution's items",
                        self.executions_in_moto, a.carried, a.largest_execution, a.good_started_once, a.good
                    ),
                );
                let restarts = f.counts.executions.saturating_sub(self.executions_in_moto);
                line(
                    s,
                    4,
                    "duplicates",
                    &format!(
                        "{} message(s) found started (EMF Duplicates, summed over {} invocations); {restarts} \
                         idempotent re-start(s) of a running execution (EMF Executions {} - {} in moto)",
                        f.counts.duplicates, f.invocations, f.counts.executions, self.executions_in_moto
                    ),
                );
            }
        }
        line(s, 4, "throughput", &self.throughput.text());
        if let (Some(records), Some(sent)) = (
            self.esm.as_ref().and_then(|v| v.get("records")).and_then(Value::as_u64),
            self.sent,
        ) {
            line(
                s,
                4,
                "deliveries",
                &format!(
                    "{records} records for {sent} messages (local-esm): {} redelivered (SQS delivers at least once)",
                    records.saturating_sub(sent)
                ),
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
        line(
            s,
            4,
            "DLQ",
            &format!(
                "{} message(s){reasons}; {} of {} bad messages are there",
                a.dlq_depth, a.bad_in_dlq, a.bad
            ),
        );
        let batch = match a.shape {
            Shape::Single => String::new(),
            Shape::Batch => format!(
                "; executions {}, claims written {}, claims found {}",
                f.counts.executions, f.counts.claims_written, f.counts.claims_found
            ),
        };
        line(
            s,
            4,
            "function",
            &format!(
                "started {}, retried {}, throttled {}, failed (batchItemFailures) {}, dead-lettered {}; \
                 table calls (LeaseCalls) {}, fallbacks {}{batch}",
                f.counts.started,
                f.counts.retried,
                f.counts.throttled,
                f.counts.failed,
                f.counts.dead_lettered,
                f.counts.lease_calls,
                f.counts.fallbacks
            ),
        );
    }
}

impl Report {
    /// The report as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "sfn-pacer demo report");
        self.render_parameters(&mut s);
        for deployment in &self.deployments {
            deployment.render_into(&mut s);
        }
        self.render_budget(&mut s);
        for (label, text) in self.cap.iter().flat_map(crate::cap::render) {
            line(&mut s, 2, label, &text);
        }
        self.render_timing(&mut s);
        line(&mut s, 2, "logs", &self.log_dir.display().to_string());
        if self.ok {
            line(
                &mut s,
                2,
                "result",
                "OK: in every deployment every good message has exactly one execution and every bad one is in \
                 the DLQ; the starts stayed within the budget",
            );
        } else {
            line(&mut s, 2, "result", "FAILED");
            for problem in &self.problems {
                let _ = writeln!(s, "    - {problem}");
            }
        }
        s
    }

    fn render_parameters(&self, s: &mut String) {
        let p = &self.parameters;
        let bad: u64 = self.deployments.iter().map(|d| d.accounting.bad).sum();
        let sharing = match (&p.coordination_table, &p.quota_key) {
            (Some(table), Some(key)) => format!("coordinated in table {table} (QUOTA_KEY {key})"),
            _ => "static split (no coordination table)".to_string(),
        };
        line(
            s,
            2,
            "parameters",
            &format!(
                "{} messages ({bad} bad) over {} deployment(s), budget {:.0} starts/s, burst {:.0}, {sharing}: each \
                 told {} starts/s, burst {}; {} instances each, batch {}, {}, produced at {:.0}/s in all",
                p.messages,
                p.deployments,
                p.rate,
                p.burst,
                p.told_rate,
                p.told_burst,
                p.max_concurrency,
                p.batch_size,
                match p.messages_per_execution {
                    1 => "one message per execution".to_string(),
                    n => format!("up to {n} messages per execution"),
                },
                p.produce_rate
            ),
        );
    }

    fn render_budget(&self, s: &mut String) {
        let b = &self.budget;
        let rates: Vec<String> = self
            .deployments
            .iter()
            .map(|d| format!("{} {:.1}/s", d.name, d.achieved_rate))
            .collect();
        line(
            s,
            2,
            "throughput",
            &format!("{} (all deployments)", self.throughput.text()),
        );
        line(
            s,
            2,
            "start rates",
            &format!(
                "deployment {}, sum {:.1}/s vs budget {:.0}/s ({:.0} %)",
                rates.join(", "),
                b.achieved_rate,
                b.rate,
                b.achieved_percent
            ),
        );
        line(
            s,
            2,
            "budget check",
            &format!(
                "peak over 5 s {:.1}/s (sum, from the start times in moto) {} limit {:.1}/s \
                 (budget x {} + burst / 5 s): {}",
                b.peak_rate_5s,
                if b.within { "<=" } else { ">" },
                b.limit,
                rate::BUDGET_MARGIN,
                if b.within { "within" } else { "OVER" }
            ),
        );
        let f = &self.function;
        let coordination = if self.parameters.coordination_table.is_some() {
            format!(
                "{} table calls (LeaseCalls), {} fallback(s) to the static split; shared rate {:.1}/s as last reported",
                f.counts.lease_calls, f.counts.fallbacks, f.shared_rate
            )
        } else {
            "off (--static-split): each instance paces its own share".to_string()
        };
        line(s, 2, "coordination", &coordination);
        if self.parameters.messages_per_execution > 1 {
            line(
                s,
                2,
                "claims",
                &format!(
                    "{} written, {} found already written on a redelivery (EMF ClaimsWritten, ClaimsFound, summed): \
                     each message of a batch execution is claimed once in the coordination table",
                    f.counts.claims_written, f.counts.claims_found
                ),
            );
        }
    }

    fn render_timing(&self, s: &mut String) {
        let t = &self.timing;
        let drained = if self.drained {
            ""
        } else {
            " (NOT drained: --max-seconds reached)"
        };
        line(
            s,
            2,
            "drain time",
            &format!(
                "{:.1} s{drained} (shortest possible at this pace: {:.1} s); deepest queues {}",
                t.drain_seconds, t.drain_bound_seconds, t.max_queue_depth
            ),
        );
        line(
            s,
            2,
            "total time",
            &format!("{:.1} s (setup and teardown included)", t.total_seconds),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_check_allows_the_burst_and_a_margin() {
        let b = Budget::check(100.0, 100.0, 2950, 30.0, 129.0);
        assert!((b.achieved_rate - 2950.0 / 30.0).abs() < 1e-9);
        assert!((b.limit - 130.0).abs() < 1e-9);
        assert!(b.within);
        assert!(!Budget::check(100.0, 100.0, 2950, 30.0, 131.0).within);
    }

    #[test]
    fn throughput_is_measured_against_the_refill() {
        let t = Throughput::new(2436, 250, 3.0, 100.0);
        assert!((t.message_rate - 812.0).abs() < 1e-9);
        assert!((t.messages_per_execution - 9.744).abs() < 1e-9);
        assert_eq!(
            t.text(),
            "messages 812.0/s = 8.1x the refill of 100/s; executions 83.3/s, 9.7 messages per execution"
        );
        let none = Throughput::new(0, 0, 0.0, 0.0);
        assert_eq!(
            (none.message_rate, none.messages_per_execution, none.refill_multiple),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn lines_align() {
        let mut s = String::new();
        line(&mut s, 2, "logs", "x");
        line(&mut s, 4, "DLQ", "y");
        assert_eq!(s, format!("  logs{}x\n    DLQ{}y\n", " ".repeat(15), " ".repeat(14)));
    }
}
