//! Per-invocation counts, the summary log line, and CloudWatch Embedded Metric Format (EMF).
//!
//! Why a small serializer of our own: the EMF document is one JSON object with a fixed
//! `_aws` section (specification: "Embedded metric format specification", CloudWatch
//! user guide); the crates that write it pull in their own runtime and logger. The test
//! below checks the document against the specification's rules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Counters filled concurrently while a batch is processed.
#[derive(Debug, Default)]
pub struct Tally {
    started: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    throttled: AtomicU64,
    dead_lettered: AtomicU64,
    possible_duplicates: AtomicU64,
    merged: AtomicU64,
    deferred: AtomicU64,
    executions: AtomicU64,
    claims_written: AtomicU64,
    claims_found: AtomicU64,
    pacing_delay_micros: AtomicU64,
    waiting_for_slot: AtomicU64,
    resent: AtomicU64,
    slots_released: AtomicU64,
    slots_reclaimed: AtomicU64,
    release_events: AtomicU64,
    duplicate_release_events: AtomicU64,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A message's execution was started (one per message: a batch execution counts each).
    Started,
    /// A message's execution already existed.
    Duplicate,
    /// An attempt was retried within the invocation.
    Retried,
    /// An attempt was throttled.
    Throttled,
    /// A message was sent to the DLQ.
    DeadLettered,
    /// Express only: a start after an attempt whose outcome was unknown.
    PossibleDuplicate,
    /// A record acknowledged with another one of the same execution name.
    Merged,
    /// A message reported without being tried (deadline cutoff, rest of a FIFO group).
    Deferred,
    /// An execution was started (in batch mode, carrying several messages).
    Executions,
    /// A message claimed for a batch execution (`MESSAGES_PER_EXECUTION` > 1, Standard).
    ClaimWritten,
    /// A message found already claimed by an earlier delivery.
    ClaimFound,
    /// A message deferred for want of a running slot (`MAX_RUNNING_EXECUTIONS`).
    WaitingForSlot,
    /// A waiting message re-sent to its queue (before its last receive), then acknowledged.
    Resent,
    /// A running slot released by its execution's status change event.
    SlotsReleased,
    /// A running slot released by the reclaim (expired; its execution ended, or never started).
    SlotsReclaimed,
    /// A status change event received.
    ReleaseEvents,
    /// A status change event that freed nothing (a duplicate, late, or no slot held).
    DuplicateReleaseEvents,
}

impl Tally {
    fn counter(&self, count: Count) -> &AtomicU64 {
        match count {
            Count::Started => &self.started,
            Count::Duplicate => &self.duplicates,
            Count::Retried => &self.retried,
            Count::Throttled => &self.throttled,
            Count::DeadLettered => &self.dead_lettered,
            Count::PossibleDuplicate => &self.possible_duplicates,
            Count::Merged => &self.merged,
            Count::Deferred => &self.deferred,
            Count::Executions => &self.executions,
            Count::ClaimWritten => &self.claims_written,
            Count::ClaimFound => &self.claims_found,
            Count::WaitingForSlot => &self.waiting_for_slot,
            Count::Resent => &self.resent,
            Count::SlotsReleased => &self.slots_released,
            Count::SlotsReclaimed => &self.slots_reclaimed,
            Count::ReleaseEvents => &self.release_events,
            Count::DuplicateReleaseEvents => &self.duplicate_release_events,
        }
    }

    /// Adds one to `count`.
    pub fn add(&self, count: Count) {
        self.add_many(count, 1);
    }

    /// Adds `n` to `count`.
    pub fn add_many(&self, count: Count, n: u64) {
        self.counter(count).fetch_add(n, Ordering::Relaxed);
    }

    /// Adds time spent waiting for the pacer.
    pub fn add_pacing_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.pacing_delay_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The final report, given how many messages were received and reported as failures.
    pub fn report(&self, received: usize, failed: usize, elapsed: Duration) -> Report {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let started = get(&self.started);
        let seconds = elapsed.as_secs_f64();
        Report {
            received: received as u64,
            started,
            duplicates: get(&self.duplicates),
            retried: get(&self.retried),
            throttled: get(&self.throttled),
            failed: failed as u64,
            dead_lettered: get(&self.dead_lettered),
            possible_duplicates: get(&self.possible_duplicates),
            merged: get(&self.merged),
            deferred: get(&self.deferred),
            executions: get(&self.executions),
            claims_written: get(&self.claims_written),
            claims_found: get(&self.claims_found),
            waiting_for_slot: get(&self.waiting_for_slot),
            resent: get(&self.resent),
            slots_released: get(&self.slots_released),
            slots_reclaimed: get(&self.slots_reclaimed),
            release_events: get(&self.release_events),
            duplicate_release_events: get(&self.duplicate_release_events),
            running: None,
            running_cap: None,
            lease_calls: 0,
            fallbacks: 0,
            lease_slots_dropped: 0,
            budget_reshards: 0,
            lease_latencies_ms: Vec::new(),
            shared_rate_per_second: 0.0,
            pacing_delay_ms: get(&self.pacing_delay_micros) as f64 / 1000.0,
            elapsed_ms: seconds * 1000.0,
            effective_rate_per_second: if seconds > 0.0 { started as f64 / seconds } else { 0.0 },
        }
    }
}

/// What one invocation did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Records in the batch.
    pub received: u64,
    /// Messages whose execution was started (one per message; see `executions`).
    pub started: u64,
    /// Messages whose execution already existed (acknowledged).
    pub duplicates: u64,
    /// In-invocation retries of StartExecution.
    pub retried: u64,
    /// StartExecution attempts answered with a throttle.
    pub throttled: u64,
    /// Messages listed in `batchItemFailures`.
    pub failed: u64,
    /// Messages sent to the DLQ by the function (acknowledged).
    pub dead_lettered: u64,
    /// Express only: starts that may repeat an earlier, unconfirmed one.
    pub possible_duplicates: u64,
    /// Records acknowledged with another record of the batch that has the same execution name
    /// (one execution for both). `received = started + duplicates + merged + failed +
    /// dead_lettered` for a batch of distinct message ids.
    pub merged: u64,
    /// Messages reported without being tried (the deadline cutoff, the rest of a FIFO group
    /// after a failure): made visible again at once, or after the group's backoff.
    pub deferred: u64,
    /// Executions started: `started` in single mode, fewer in batch mode
    /// (`MESSAGES_PER_EXECUTION` > 1), where each carries several messages.
    pub executions: u64,
    /// Batch mode on Standard: messages claimed for their execution in the coordination table.
    pub claims_written: u64,
    /// Batch mode on Standard: messages found claimed by an earlier delivery (their recorded
    /// execution is started again, a no-op when it exists).
    pub claims_found: u64,
    /// The cap: messages deferred for want of a running slot.
    pub waiting_for_slot: u64,
    /// The cap: waiting messages re-sent to their queue before their last receive.
    pub resent: u64,
    /// The cap: slots released by status change events.
    pub slots_released: u64,
    /// The cap: slots released by the reclaim (expired, ended, never started).
    pub slots_reclaimed: u64,
    /// The cap: status change events received.
    pub release_events: u64,
    /// The cap: status change events that freed nothing.
    pub duplicate_release_events: u64,
    /// The cap: running slots held, all instances together, as this instance last saw them.
    pub running: Option<u64>,
    /// The cap: its size (`RunningCap`), as this instance last saw it (it may change live).
    pub running_cap: Option<u64>,
    /// Coordinated mode: calls to the coordination table.
    pub lease_calls: u64,
    /// Coordinated mode: starts paced by the static split because the table could not be used.
    pub fallbacks: u64,
    /// Coordinated mode: leased slots neither used nor given back (quota lost to everyone).
    pub lease_slots_dropped: u64,
    /// Coordinated mode: reshards of the budget this instance made (its items' load called for
    /// more or fewer of them: `budget::shards`).
    pub budget_reshards: u64,
    /// Coordinated mode: each table call's latency, milliseconds (EMF `LeaseLatency`, whose
    /// p99 CloudWatch computes from the values).
    pub lease_latencies_ms: Vec<f64>,
    /// Coordinated mode: the shared budget's effective rate, per second, as last seen.
    pub shared_rate_per_second: f64,
    /// Total time calls waited for the pacer, milliseconds (summed over concurrent calls).
    pub pacing_delay_ms: f64,
    /// Wall time of the invocation, milliseconds.
    pub elapsed_ms: f64,
    /// Started executions per second of wall time.
    pub effective_rate_per_second: f64,
}

impl Report {
    /// The counts by EMF name, in the order the EMF document declares them.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        COUNTS.iter().map(move |(name, get, _)| (*name, get(self)))
    }

    /// Adds `other`'s counts to these, and its lease latencies (the durations, the rate and
    /// `running` are left as they are).
    pub fn add_counts(&mut self, other: &Report) {
        for (_, get, set) in COUNTS.iter() {
            set(self, get(self).saturating_add(get(other)));
        }
        self.lease_latencies_ms.extend_from_slice(&other.lease_latencies_ms);
    }

    /// The p99 of the lease latencies, milliseconds (`None` without any).
    pub fn lease_latency_p99_ms(&self) -> Option<f64> {
        let mut sorted = self.lease_latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = (sorted.len() as f64 * 0.99).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied()
    }

    /// Writes the one summary log line of the invocation.
    pub fn log(&self) {
        tracing::info!(
            received = self.received,
            started = self.started,
            duplicates = self.duplicates,
            retried = self.retried,
            throttled = self.throttled,
            failed = self.failed,
            dead_lettered = self.dead_lettered,
            possible_duplicates = self.possible_duplicates,
            merged = self.merged,
            deferred = self.deferred,
            executions = self.executions,
            claims_written = self.claims_written,
            claims_found = self.claims_found,
            lease_calls = self.lease_calls,
            fallbacks = self.fallbacks,
            waiting_for_slot = self.waiting_for_slot,
            resent = self.resent,
            slots_reclaimed = self.slots_reclaimed,
            lease_slots_dropped = self.lease_slots_dropped,
            lease_latency_p99_ms = self.lease_latency_p99_ms().map(|ms| ms.round() as u64),
            pacing_delay_ms = self.pacing_delay_ms.round() as u64,
            elapsed_ms = self.elapsed_ms.round() as u64,
            effective_rate = format!("{:.1}/s", self.effective_rate_per_second),
            "batch summary"
        );
    }

    /// The EMF document for this report: metrics in `namespace`, dimension `FunctionName`.
    pub fn emf(&self, namespace: &str, function_name: &str, timestamp_ms: u64) -> Value {
        let mut root = Map::new();
        let mut declared = Vec::new();
        for (name, get, _) in COUNTS.iter() {
            declared.push(json!({"Name": name, "Unit": "Count"}));
            root.insert((*name).into(), json!(get(self)));
        }
        for (name, value) in [("Running", self.running), ("RunningCap", self.running_cap)] {
            if let Some(value) = value {
                declared.push(json!({"Name": name, "Unit": "Count"}));
                root.insert(name.into(), json!(value));
            }
        }
        for (name, unit, value) in [
            ("PacingDelay", "Milliseconds", self.pacing_delay_ms),
            ("BatchDuration", "Milliseconds", self.elapsed_ms),
            ("EffectiveRate", "Count/Second", self.effective_rate_per_second),
            ("SharedRate", "Count/Second", self.shared_rate_per_second),
            ("MessagesPerExecution", "Count", self.messages_per_execution()),
        ] {
            declared.push(json!({"Name": name, "Unit": unit}));
            root.insert(name.into(), json!(value));
        }
        if !self.lease_latencies_ms.is_empty() {
            declared.push(json!({"Name": "LeaseLatency", "Unit": "Milliseconds"}));
            root.insert("LeaseLatency".into(), json!(emf_values(&self.lease_latencies_ms)));
        }
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [["FunctionName"]], "Metrics": declared}],
            }),
        );
        root.insert("FunctionName".into(), json!(function_name));
        Value::Object(root)
    }

    /// Messages per started execution: `started / executions` (0 when none started).
    pub fn messages_per_execution(&self) -> f64 {
        match self.executions {
            0 => 0.0,
            n => self.started as f64 / n as f64,
        }
    }

    /// Reads the counts back from an EMF document written by [`Report::emf`]; `None` when
    /// `doc` is not an EMF document. (The local demo sums these from the function's stdout.)
    pub fn from_emf(doc: &Value) -> Option<Report> {
        doc.get("_aws")?.get("CloudWatchMetrics")?;
        let mut report = Report::default();
        for (name, _, set) in COUNTS.iter() {
            set(&mut report, doc.get(*name).and_then(Value::as_u64).unwrap_or(0));
        }
        report.running = doc.get("Running").and_then(Value::as_u64);
        report.running_cap = doc.get("RunningCap").and_then(Value::as_u64);
        let float = |name: &str| doc.get(name).and_then(Value::as_f64).unwrap_or(0.0);
        report.pacing_delay_ms = float("PacingDelay");
        report.elapsed_ms = float("BatchDuration");
        report.effective_rate_per_second = float("EffectiveRate");
        report.shared_rate_per_second = float("SharedRate");
        report.lease_latencies_ms = match doc.get("LeaseLatency") {
            Some(Value::Array(values)) => values.iter().filter_map(Value::as_f64).collect(),
            Some(value) => value.as_f64().into_iter().collect(),
            None => Vec::new(),
        };
        Some(report)
    }
}

/// The most values one EMF metric holds.
const MAX_EMF_VALUES: usize = 100;

/// `values` as one EMF metric's values: all of them, or, beyond [`MAX_EMF_VALUES`], that many
/// evenly spaced in rank (the smallest and the largest kept), so the percentiles CloudWatch
/// computes from them stay those of all.
fn emf_values(values: &[f64]) -> Vec<f64> {
    if values.len() <= MAX_EMF_VALUES {
        return values.to_vec();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len() - 1;
    (0..MAX_EMF_VALUES)
        .map(|i| sorted[i * last / (MAX_EMF_VALUES - 1)])
        .collect()
}

/// A count's EMF name, how to read it from a report and how to set it.
type CountMetric = (&'static str, fn(&Report) -> u64, fn(&mut Report, u64));

/// The count metrics, in the order the EMF document declares them: the one list of names.
const COUNTS: [CountMetric; 23] = [
    ("Received", |r| r.received, |r, v| r.received = v),
    ("Started", |r| r.started, |r, v| r.started = v),
    ("Duplicates", |r| r.duplicates, |r, v| r.duplicates = v),
    ("Retried", |r| r.retried, |r, v| r.retried = v),
    ("Throttled", |r| r.throttled, |r, v| r.throttled = v),
    ("Failed", |r| r.failed, |r, v| r.failed = v),
    ("DeadLettered", |r| r.dead_lettered, |r, v| r.dead_lettered = v),
    (
        "PossibleDuplicates",
        |r| r.possible_duplicates,
        |r, v| r.possible_duplicates = v,
    ),
    ("Merged", |r| r.merged, |r, v| r.merged = v),
    ("Deferred", |r| r.deferred, |r, v| r.deferred = v),
    ("LeaseCalls", |r| r.lease_calls, |r, v| r.lease_calls = v),
    ("Fallbacks", |r| r.fallbacks, |r, v| r.fallbacks = v),
    (
        "LeaseSlotsDropped",
        |r| r.lease_slots_dropped,
        |r, v| r.lease_slots_dropped = v,
    ),
    ("BudgetReshards", |r| r.budget_reshards, |r, v| r.budget_reshards = v),
    ("Executions", |r| r.executions, |r, v| r.executions = v),
    ("ClaimsWritten", |r| r.claims_written, |r, v| r.claims_written = v),
    ("ClaimsFound", |r| r.claims_found, |r, v| r.claims_found = v),
    // The cap's (MAX_RUNNING_EXECUTIONS).
    ("WaitingForSlot", |r| r.waiting_for_slot, |r, v| r.waiting_for_slot = v),
    ("Resent", |r| r.resent, |r, v| r.resent = v),
    ("SlotsReleased", |r| r.slots_released, |r, v| r.slots_released = v),
    ("SlotsReclaimed", |r| r.slots_reclaimed, |r, v| r.slots_reclaimed = v),
    ("ReleaseEvents", |r| r.release_events, |r, v| r.release_events = v),
    (
        "DuplicateReleaseEvents",
        |r| r.duplicate_release_events,
        |r, v| r.duplicate_release_events = v,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Units the EMF specification allows (CloudWatch `StandardUnit`).
    const UNITS: &[&str] = &[
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];

    #[test]
    fn the_tally_becomes_a_report() {
        let t = Tally::default();
        t.add(Count::Started);
        t.add(Count::Started);
        t.add(Count::Duplicate);
        t.add(Count::Throttled);
        t.add_pacing_delay(Duration::from_micros(1500));
        let r = t.report(5, 2, Duration::from_millis(500));
        assert_eq!(
            (r.received, r.started, r.duplicates, r.throttled, r.failed),
            (5, 2, 1, 1, 2)
        );
        assert_eq!(r.pacing_delay_ms, 1.5);
        assert_eq!(r.effective_rate_per_second, 4.0);
        assert_eq!(t.report(0, 0, Duration::ZERO).effective_rate_per_second, 0.0);
    }

    #[test]
    fn the_emf_document_follows_the_specification() {
        let r = Report {
            started: 7,
            failed: 1,
            elapsed_ms: 12.5,
            ..Report::default()
        };
        let doc = r.emf("SfnPacer", "starter-fn", 1_700_000_000_000);
        let aws = &doc["_aws"];
        assert_eq!(aws["Timestamp"], 1_700_000_000_000u64, "epoch milliseconds");
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 1);
        let d = &directives[0];
        assert_eq!(d["Namespace"], "SfnPacer");
        let dimension_sets = d["Dimensions"].as_array().unwrap();
        for set in dimension_sets {
            let keys = set.as_array().unwrap();
            assert!(keys.len() <= 30);
            for key in keys {
                assert!(
                    doc[key.as_str().unwrap()].is_string(),
                    "dimension {key} must be a string at the root"
                );
            }
        }
        let metrics = d["Metrics"].as_array().unwrap();
        assert!(metrics.len() <= 100);
        let names: Vec<&str> = metrics.iter().map(|m| m["Name"].as_str().unwrap()).collect();
        for expected in [
            "Started",
            "Duplicates",
            "Retried",
            "Throttled",
            "Failed",
            "DeadLettered",
            "PacingDelay",
            "BatchDuration",
            "EffectiveRate",
            "Executions",
            "MessagesPerExecution",
            "ClaimsWritten",
            "ClaimsFound",
            "WaitingForSlot",
            "SlotsReleased",
            "SlotsReclaimed",
            "ReleaseEvents",
            "DuplicateReleaseEvents",
            "LeaseSlotsDropped",
        ] {
            assert!(names.contains(&expected), "{expected} missing");
        }
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            assert!(!name.is_empty() && name.len() <= 1024);
            assert!(UNITS.contains(&m["Unit"].as_str().unwrap()), "{m}");
            assert!(doc[name].is_number(), "metric {name} must be a number at the root");
        }
        assert_eq!(doc["Started"], 7);
        assert_eq!(doc["BatchDuration"], 12.5);
        // One line of JSON, as CloudWatch Logs expects.
        assert!(!doc.to_string().contains('\n'));
    }

    #[test]
    fn lease_latencies_are_values_of_one_metric_whose_percentiles_stay_those_of_all() {
        let few = Report {
            lease_latencies_ms: vec![10.0, 20.0],
            ..Report::default()
        };
        let doc = few.emf("SfnPacer", "f", 1);
        assert_eq!(doc["LeaseLatency"], json!([10.0, 20.0]));
        assert!(Report::default().emf("SfnPacer", "f", 1).get("LeaseLatency").is_none());
        let many = Report {
            lease_latencies_ms: (1..=1000).rev().map(f64::from).collect(),
            ..Report::default()
        };
        let values: Vec<f64> = many.emf("SfnPacer", "f", 1)["LeaseLatency"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(values.len(), MAX_EMF_VALUES);
        assert_eq!((values[0], values[99]), (1.0, 1000.0));
        let sampled = Report {
            lease_latencies_ms: values,
            ..Report::default()
        };
        let (all, kept) = (
            many.lease_latency_p99_ms().unwrap(),
            sampled.lease_latency_p99_ms().unwrap(),
        );
        assert!((all - kept).abs() <= 20.0, "p99 {all} vs {kept}");
        assert_eq!(Report::default().lease_latency_p99_ms(), None);
    }

    #[test]
    fn a_report_reads_back_from_its_emf_document() {
        let r = Report {
            received: 10,
            started: 7,
            duplicates: 2,
            retried: 3,
            throttled: 1,
            failed: 1,
            dead_lettered: 1,
            possible_duplicates: 0,
            merged: 3,
            deferred: 5,
            executions: 2,
            claims_written: 6,
            claims_found: 1,
            waiting_for_slot: 8,
            resent: 2,
            slots_released: 5,
            slots_reclaimed: 1,
            release_events: 7,
            duplicate_release_events: 2,
            running: Some(20),
            running_cap: Some(25),
            lease_calls: 4,
            fallbacks: 2,
            lease_slots_dropped: 3,
            budget_reshards: 1,
            lease_latencies_ms: vec![7.5, 12.0, 160.0],
            shared_rate_per_second: 150.0,
            pacing_delay_ms: 30.5,
            elapsed_ms: 412.5,
            effective_rate_per_second: 17.0,
        };
        let doc = r.emf("SfnPacer", "f", 1);
        assert_eq!(Report::from_emf(&doc), Some(r));
        assert_eq!(doc["MessagesPerExecution"], 3.5, "started / executions");
        assert_eq!(Report::from_emf(&json!({"Started": 7})), None, "not EMF without _aws");
    }
}
