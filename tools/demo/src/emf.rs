//! The function's CloudWatch EMF lines (one per invocation, on the starter's stdout), summed.

use serde::Serialize;
use serde_json::Value;
use sfn_pacer::metrics::Report;

/// The counts of one invocation's EMF document: the function's own report, read back.
pub type EmfSample = Report;

/// Parses one stdout line; `None` unless it is an EMF document (a JSON object with `_aws`).
pub fn parse_line(line: &str) -> Option<EmfSample> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    let doc: Value = serde_json::from_str(line).ok()?;
    Report::from_emf(&doc)
}

/// The sums over every invocation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionTotals {
    /// EMF documents seen (invocations, the warm-up included).
    pub invocations: u64,
    /// The function's counts, summed (records received, a redelivered message counting again;
    /// started, duplicates, retried, throttled, failed, dead-lettered, possible duplicates;
    /// coordinated mode: lease calls to the table, fallbacks to the static split).
    pub counts: Report,
    /// Coordinated mode: the shared budget's effective rate, per second, as last reported.
    pub shared_rate: f64,
}

impl FunctionTotals {
    /// Adds one invocation.
    pub fn add(&mut self, s: &EmfSample) {
        self.invocations += 1;
        self.counts.add_counts(s);
        if s.shared_rate_per_second > 0.0 {
            self.shared_rate = s.shared_rate_per_second;
        }
    }

    /// Adds another function's totals (the last shared rate seen by either).
    pub fn merge(&mut self, other: &FunctionTotals) {
        self.invocations += other.invocations;
        self.counts.add_counts(&other.counts);
        if other.shared_rate > 0.0 {
            self.shared_rate = other.shared_rate;
        }
    }
}

/// `{"invocations": n, "Received": n, "Started": n, …}`: the counts under their EMF names.
impl Serialize for FunctionTotals {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("invocations", &self.invocations)?;
        for (name, value) in self.counts.counts() {
            map.serialize_entry(name, &value)?;
        }
        map.serialize_entry("SharedRate", &self.shared_rate)?;
        map.end()
    }
}

/// Totals plus when starts happened (seconds since the run began, count), for rates.
#[derive(Clone, Debug, Default)]
pub struct EmfLog {
    /// The sums.
    pub totals: FunctionTotals,
    /// `(seconds since the run began, started)` per invocation that started something:
    /// messages (`Started` counts each message of a batch execution).
    pub starts: Vec<(f64, u64)>,
    /// `(seconds since the run began, executions)` per invocation that started something.
    pub executions: Vec<(f64, u64)>,
}

impl EmfLog {
    /// Records one invocation seen at `at_seconds`.
    pub fn record(&mut self, at_seconds: f64, sample: &EmfSample) {
        self.totals.add(sample);
        if sample.started > 0 {
            self.starts.push((at_seconds, sample.started));
        }
        if sample.executions > 0 {
            self.executions.push((at_seconds, sample.executions));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"BatchDuration":412.5,"DeadLettered":1,"Duplicates":2,"EffectiveRate":21.8,"Failed":0,"FunctionName":"starter","PacingDelay":30.0,"Received":10,"Retried":3,"Started":7,"Throttled":1,"_aws":{"CloudWatchMetrics":[{"Dimensions":[["FunctionName"]],"Metrics":[{"Name":"Started","Unit":"Count"}],"Namespace":"SfnPacer"}],"Timestamp":1795304163993}}"#;

    #[test]
    fn emf_lines_parse_and_other_lines_do_not() {
        let s = parse_line(LINE).unwrap();
        let counts = (
            s.received,
            s.started,
            s.duplicates,
            s.retried,
            s.throttled,
            s.failed,
            s.dead_lettered,
        );
        assert_eq!(counts, (10, 7, 2, 3, 1, 0, 1));
        assert_eq!(parse_line(&format!("  {LINE}\r")), Some(s));
        assert_eq!(parse_line(" INFO batch summary received=10 started=7"), None);
        assert_eq!(parse_line(r#"{"Started":7}"#), None, "JSON without _aws is a log line");
        assert_eq!(parse_line("{not json"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn totals_sum_invocations_and_remember_when_starts_happened() {
        let mut log = EmfLog::default();
        let s = parse_line(LINE).unwrap();
        log.record(1.0, &s);
        log.record(2.5, &s);
        log.record(3.0, &EmfSample::default());
        assert_eq!(log.totals.invocations, 3);
        assert_eq!(log.totals.counts.started, 14);
        assert_eq!(log.totals.counts.duplicates, 4);
        assert_eq!(log.totals.counts.received, 20);
        assert_eq!(log.totals.counts.dead_lettered, 2);
        assert_eq!(log.starts, vec![(1.0, 7), (2.5, 7)]);
        assert!(log.executions.is_empty(), "a line without Executions started none");
        let batch = parse_line(&LINE.replace(
            r#""Failed":0"#,
            r#""Failed":0,"Executions":2,"ClaimsWritten":7,"ClaimsFound":1"#,
        ))
        .unwrap();
        log.record(4.0, &batch);
        assert_eq!(log.executions, vec![(4.0, 2)]);
        assert_eq!(
            (
                log.totals.counts.executions,
                log.totals.counts.claims_written,
                log.totals.counts.claims_found
            ),
            (2, 7, 1)
        );
    }

    #[test]
    fn coordinated_counts_are_summed_and_the_shared_rate_is_the_last_seen() {
        let doc = LINE.replace(
            r#""Failed":0"#,
            r#""Failed":0,"LeaseCalls":3,"Fallbacks":1,"SharedRate":95.5"#,
        );
        let s = parse_line(&doc).unwrap();
        let mut a = FunctionTotals::default();
        a.add(&s);
        a.add(&EmfSample::default());
        assert_eq!((a.counts.lease_calls, a.counts.fallbacks), (3, 1));
        assert!(
            (a.shared_rate - 95.5).abs() < 1e-9,
            "a report without it keeps the last"
        );
        let mut sum = FunctionTotals::default();
        sum.merge(&a);
        sum.merge(&a);
        assert_eq!(
            (sum.invocations, sum.counts.lease_calls, sum.counts.started),
            (4, 6, 14)
        );
        let json = serde_json::to_value(&sum).unwrap();
        assert_eq!(
            (json["LeaseCalls"].as_u64(), json["Fallbacks"].as_u64()),
            (Some(6), Some(2))
        );
        assert_eq!(json["SharedRate"].as_f64(), Some(95.5));
    }
}
