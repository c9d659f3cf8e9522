//! Handler tests on in-memory fakes and tokio's paused clock: no network, no real sleeping.

use super::*;
use crate::close::dead_letter::{DeadLetter, MAX_MESSAGE_BYTES};
use crate::close::queue::{QueueError, VisibilityChange};
use crate::start::Started;
use async_trait::async_trait;
use serde_json::json;

const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:demo";
const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:work";

type Script = Box<dyn Fn(&StartRequest, usize) -> Option<StartError> + Send + Sync>;

/// An in-memory Step Functions with Standard name semantics and a scripted failure plan.
struct FakeSfn {
    latency: Duration,
    script: Script,
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    executions: HashMap<String, String>,
    calls: Vec<(Instant, StartRequest)>,
}

impl FakeSfn {
    fn new(latency: Duration, script: Script) -> Arc<FakeSfn> {
        Arc::new(FakeSfn {
            latency,
            script,
            state: Mutex::new(FakeState::default()),
        })
    }
    fn ok() -> Arc<FakeSfn> {
        FakeSfn::new(Duration::from_millis(10), Box::new(|_, _| None))
    }
    fn executions(&self) -> HashMap<String, String> {
        self.state.lock().unwrap().executions.clone()
    }
    fn calls(&self) -> Vec<(Instant, StartRequest)> {
        self.state.lock().unwrap().calls.clone()
    }
}

#[async_trait]
impl StartExecution for FakeSfn {
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError> {
        let n = {
            let mut s = self.state.lock().unwrap();
            s.calls.push((Instant::now(), request.clone()));
            s.calls.len() - 1
        };
        sleep(self.latency).await;
        if let Some(error) = (self.script)(request, n) {
            return Err(error);
        }
        let mut s = self.state.lock().unwrap();
        let name = request.name.clone().unwrap_or_else(|| format!("auto-{n}"));
        match s.executions.get(&name) {
            Some(input) if *input != request.input => Err(service("ExecutionAlreadyExists", 400)),
            _ => {
                s.executions.insert(name.clone(), request.input.clone());
                Ok(Started {
                    execution_arn: format!("{ARN}:{name}"),
                })
            }
        }
    }
}

fn service(code: &str, status: u16) -> StartError {
    StartError::Service {
        code: code.into(),
        message: "fake".into(),
        status: Some(status),
    }
}

/// An in-memory SQS that records visibility changes and dead letters. It models what SQS
/// enforces: at most 10 entries per batch call, 1 MiB per message and per batch, and a
/// latency per call (`latency`, none by default). Leaves out: FIFO ordering and the queue's
/// own visibility clock (see `local_stack::sim` for those).
#[derive(Default)]
struct FakeQueue {
    fail_dead_letters: bool,
    latency: Duration,
    visibility: Mutex<Vec<(String, u32)>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
    /// Messages re-sent to their queue (its ARN, the letter).
    resent: Mutex<Vec<(String, DeadLetter)>>,
    /// Entries per batch call, in call order.
    batches: Mutex<Vec<usize>>,
}

#[async_trait]
impl Queue for FakeQueue {
    async fn change_visibility(&self, _queue_arn: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
        sleep(self.latency).await;
        self.visibility
            .lock()
            .unwrap()
            .push((receipt_handle.to_string(), seconds));
        Ok(())
    }
    async fn send_dead_letter(&self, _dlq_url: &str, letter: &DeadLetter) -> Result<(), QueueError> {
        if self.fail_dead_letters {
            return Err(QueueError("AccessDenied".into()));
        }
        if letter.size() > MAX_MESSAGE_BYTES {
            return Err(QueueError(format!("InvalidParameterValue: {} bytes", letter.size())));
        }
        self.dead_letters.lock().unwrap().push(letter.clone());
        Ok(())
    }
    async fn change_visibility_batch(
        &self,
        _queue_arn: &str,
        changes: &[VisibilityChange],
    ) -> Vec<Result<(), QueueError>> {
        assert!(
            changes.len() <= 10,
            "ChangeMessageVisibilityBatch takes at most 10 entries"
        );
        self.batches.lock().unwrap().push(changes.len());
        sleep(self.latency).await;
        let mut visibility = self.visibility.lock().unwrap();
        changes
            .iter()
            .map(|c| {
                visibility.push((c.receipt_handle.clone(), c.seconds));
                Ok(())
            })
            .collect()
    }
    async fn send_dead_letters(&self, dlq_url: &str, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        assert!(letters.len() <= 10, "SendMessageBatch takes at most 10 entries");
        let total: usize = letters.iter().map(DeadLetter::size).sum();
        assert!(
            total <= MAX_MESSAGE_BYTES,
            "SendMessageBatch takes at most 1 MiB: {total}"
        );
        self.batches.lock().unwrap().push(letters.len());
        sleep(self.latency).await;
        let mut out = Vec::new();
        for letter in letters {
            out.push(self.send_dead_letter(dlq_url, letter).await);
        }
        out
    }
    async fn send_messages(&self, queue_arn: &str, letters: &[DeadLetter]) -> Vec<Result<(), QueueError>> {
        assert!(letters.len() <= 10, "SendMessageBatch takes at most 10 entries");
        assert!(letters
            .iter()
            .all(|l| l.size() <= MAX_MESSAGE_BYTES && l.delay_seconds <= 900));
        self.batches.lock().unwrap().push(letters.len());
        sleep(self.latency).await;
        let mut resent = self.resent.lock().unwrap();
        letters
            .iter()
            .map(|l| {
                resent.push((queue_arn.to_string(), l.clone()));
                Ok(())
            })
            .collect()
    }
}

fn config(pairs: &[(&str, &str)]) -> Config {
    let mut all = vec![
        ("STATE_MACHINE_ARN", ARN),
        ("STARTS_PER_SECOND", "1000"),
        ("STARTS_BURST", "1000"),
    ];
    all.extend_from_slice(pairs);
    Config::from_lookup(|k| all.iter().rev().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
}

fn record(id: &str, body: &str) -> serde_json::Value {
    json!({"messageId": id, "receiptHandle": format!("rh-{id}"), "body": body, "eventSource": "aws:sqs",
           "eventSourceARN": QUEUE_ARN, "attributes": {"ApproximateReceiveCount": "1"}})
}

fn batch(n: usize) -> SqsEvent {
    let records: Vec<_> = (0..n)
        .map(|i| record(&format!("m-{i}"), &format!("{{\"n\":{i}}}")))
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

fn event(records: Vec<serde_json::Value>) -> SqsEvent {
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// A deadline `ms` milliseconds from now, epoch milliseconds.
fn deadline_in(ms: u64) -> u64 {
    now_epoch_ms() + ms
}

fn failures(outcome: &Outcome) -> Vec<String> {
    outcome
        .response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_message_starts_once_with_its_id_as_name_and_its_body_as_input() {
    let sfn = FakeSfn::ok();
    let starter = Starter::new(config(&[]), sfn.clone(), Arc::new(FakeQueue::default()));
    let outcome = starter.process(batch(25), deadline_in(60_000)).await.unwrap();
    assert!(failures(&outcome).is_empty());
    assert_eq!(outcome.report.started, 25);
    let executions = sfn.executions();
    assert_eq!(executions.len(), 25);
    assert_eq!(executions["m-7"], "{\"n\":7}");
    assert!(outcome.dispositions.iter().all(|d| *d == Disposition::Started));
}

#[tokio::test(start_paused = true)]
async fn a_bad_body_is_reported_alone_and_never_fails_the_batch() {
    let sfn = FakeSfn::ok();
    let starter = Starter::new(config(&[]), sfn.clone(), Arc::new(FakeQueue::default()));
    let mut records: Vec<_> = (0..5).map(|i| record(&format!("m-{i}"), "{}")).collect();
    records.push(record("bad", "this is not json"));
    let outcome = starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome), vec!["bad".to_string()]);
    assert_eq!(sfn.executions().len(), 5);
    assert_eq!(outcome.report.failed, 1);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_go_to_the_dlq_and_are_acknowledged() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| (r.name.as_deref() == Some("rejected-by-aws")).then(|| service("InvalidExecutionInput", 400))),
    );
    let queue = Arc::new(FakeQueue::default());
    let starter = Starter::new(config(&[("DLQ_URL", "http://q/dlq")]), sfn, queue.clone());
    let records = vec![
        record("ok", "{}"),
        record("bad", "nope"),
        record("rejected-by-aws", "{}"),
    ];
    let outcome = starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert!(failures(&outcome).is_empty(), "dead-lettered messages are acknowledged");
    assert_eq!(outcome.dispositions[1], Disposition::DeadLettered);
    assert_eq!(outcome.report.dead_lettered, 2);
    let letters = queue.dead_letters.lock().unwrap();
    let codes: HashSet<String> = letters
        .iter()
        .map(|l| match &l.attributes["sfn-pacer.error-code"] {
            crate::close::dead_letter::AttributeValue::String(code, _) => code.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        HashSet::from(["BodyNotJson".to_string(), "InvalidExecutionInput".to_string()])
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_dlq_send_reports_the_message_instead() {
    let queue = Arc::new(FakeQueue {
        fail_dead_letters: true,
        ..FakeQueue::default()
    });
    let starter = Starter::new(config(&[("DLQ_URL", "http://q/dlq")]), FakeSfn::ok(), queue);
    let outcome = starter
        .process(event(vec![record("bad", "")]), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(failures(&outcome), vec!["bad".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_batch_starts_nothing_new_and_reports_nothing() {
    let sfn = FakeSfn::ok();
    let starter = Starter::new(config(&[]), sfn.clone(), Arc::new(FakeQueue::default()));
    starter.process(batch(10), deadline_in(60_000)).await.unwrap();
    let again = starter.process(batch(10), deadline_in(60_000)).await.unwrap();
    assert!(failures(&again).is_empty());
    assert_eq!(sfn.executions().len(), 10);
}

#[tokio::test(start_paused = true)]
async fn an_existing_execution_counts_as_a_duplicate() {
    let sfn = FakeSfn::ok();
    sfn.state
        .lock()
        .unwrap()
        .executions
        .insert("m-0".into(), "{\"other\":true}".into());
    let starter = Starter::new(config(&[]), sfn, Arc::new(FakeQueue::default()));
    let outcome = starter.process(batch(2), deadline_in(60_000)).await.unwrap();
    assert_eq!(outcome.dispositions, vec![Disposition::Duplicate, Disposition::Started]);
    assert_eq!(outcome.report.duplicates, 1);
    assert!(failures(&outcome).is_empty());
}

#[tokio::test(start_paused = true)]
async fn calls_run_concurrently_at_the_paced_rate() {
    // 100/s, burst 1 (10 less the 10 kept in reserve), 50 ms per call: 100 messages take
    // about 1 s, not 5 s.
    let sfn = FakeSfn::new(Duration::from_millis(50), Box::new(|_, _| None));
    let c = config(&[("STARTS_PER_SECOND", "100"), ("STARTS_BURST", "10")]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let t0 = Instant::now();
    let outcome = starter.process(batch(100), deadline_in(60_000)).await.unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(outcome.report.started, 100);
    assert!(
        elapsed >= Duration::from_millis(990) && elapsed <= Duration::from_millis(1200),
        "{elapsed:?}"
    );
    // No 1-second window holds more than burst + rate calls.
    let times: Vec<Instant> = sfn.calls().iter().map(|(t, _)| *t).collect();
    for (i, t) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(n <= 101, "{n} calls within 1 s");
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_by_max_concurrency_instances() {
    let c = config(&[
        ("STARTS_PER_SECOND", "100"),
        ("STARTS_BURST", "10"),
        ("MAX_CONCURRENCY", "10"),
    ]);
    let starter = Starter::new(c, FakeSfn::ok(), Arc::new(FakeQueue::default()));
    assert_eq!(starter.pacer().target_per_second(), 10.0);
    assert_eq!(starter.pacer().capacity(), 1.0);
    let t0 = Instant::now();
    starter.process(batch(21), deadline_in(60_000)).await.unwrap();
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2100),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn throttles_slow_the_pacer_and_are_retried_in_the_invocation() {
    let sfn = FakeSfn::new(
        Duration::from_millis(20),
        Box::new(|_, n| (n < 30).then(|| service("ThrottlingException", 400))),
    );
    let starter = Starter::new(
        config(&[
            ("STARTS_PER_SECOND", "200"),
            ("STARTS_BURST", "20"),
            ("MAX_ATTEMPTS", "10"),
        ]),
        sfn.clone(),
        Arc::new(FakeQueue::default()),
    );
    let outcome = starter.process(batch(40), deadline_in(60_000)).await.unwrap();
    assert!(failures(&outcome).is_empty(), "{:?}", failures(&outcome));
    assert_eq!(sfn.executions().len(), 40);
    assert_eq!(outcome.report.throttled, 30);
    assert!(outcome.report.retried >= 30);
    assert!(starter.pacer().rate_per_second() < 200.0, "the rate backed off");
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_reported_with_visibility_backoff() {
    let sfn = FakeSfn::new(Duration::from_millis(5), Box::new(|_, _| Some(service("", 500))));
    let queue = Arc::new(FakeQueue::default());
    let c = config(&[
        ("MAX_ATTEMPTS", "3"),
        ("RETRY_BASE_SECONDS", "10"),
        ("RETRY_MAX_SECONDS", "60"),
    ]);
    let starter = Starter::new(c, sfn.clone(), queue.clone());
    let outcome = starter.process(batch(4), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome).len(), 4);
    assert_eq!(sfn.calls().len(), 12, "three attempts each");
    let visibility = queue.visibility.lock().unwrap();
    assert_eq!(visibility.len(), 4);
    assert!(
        visibility.iter().all(|(_, s)| *s < 10),
        "first delivery: below the base of 10 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_state_machine_reports_everything_without_a_handler_error() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|_, _| Some(service("StateMachineDoesNotExist", 400))),
    );
    let c = config(&[("MAX_IN_FLIGHT", "4")]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let outcome = starter.process(batch(50), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome).len(), 50);
    assert!(
        sfn.calls().len() <= 4,
        "once known, nothing more is tried: {} calls",
        sfn.calls().len()
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_after_the_cutoff_and_the_rest_is_reported() {
    // 10/s with a burst of 1; 3 s left with a 1 s margin: about 21 starts fit.
    let sfn = FakeSfn::new(Duration::from_millis(10), Box::new(|_, _| None));
    let c = config(&[
        ("STARTS_PER_SECOND", "10"),
        ("STARTS_BURST", "1"),
        ("DEADLINE_MARGIN_MS", "1000"),
        ("CALL_TIMEOUT_MS", "500"),
    ]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let t0 = Instant::now();
    let outcome = starter.process(batch(60), deadline_in(3_000)).await.unwrap();
    let started = outcome.report.started as usize;
    assert!((19..=22).contains(&started), "{started}");
    assert_eq!(failures(&outcome).len(), 60 - started);
    let last_call = sfn.calls().iter().map(|(t, _)| *t).max().unwrap();
    assert!(
        last_call <= t0 + Duration::from_secs(2),
        "a call started after the cutoff"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_in_the_past_means_the_local_budget() {
    assert_eq!(time_budget(0, 1_000, Duration::from_secs(30)), Duration::from_secs(30));
    assert_eq!(
        time_budget(5_000, 1_000, Duration::from_secs(30)),
        Duration::from_secs(4)
    );
    // Only a 1970-style deadline is unknown: a real one already past leaves no time.
    let now = now_epoch_ms();
    assert_eq!(time_budget(now - 5_000, now, Duration::from_secs(30)), Duration::ZERO);
    let starter = Starter::new(
        config(&[("LOCAL_DEADLINE_MS", "60000")]),
        FakeSfn::ok(),
        Arc::new(FakeQueue::default()),
    );
    let outcome = starter.process(batch(5), 1_000).await.unwrap();
    assert_eq!(
        outcome.report.started, 5,
        "cargo lambda watch's 1970 deadline does not stop the batch"
    );
}

#[tokio::test(start_paused = true)]
async fn each_message_passes_its_own_trace_header_on() {
    let sfn = FakeSfn::ok();
    let starter = Starter::new(config(&[]), sfn.clone(), Arc::new(FakeQueue::default()));
    let records: Vec<_> = (0..3)
        .map(|i| {
            let mut r = record(&format!("t-{i}"), "{}");
            if i != 1 {
                r["attributes"]["AWSTraceHeader"] =
                    json!(format!("Root=1-00000000-00000000000000000000000{i};Sampled=1"));
            }
            r
        })
        .collect();
    starter.process(event(records), deadline_in(60_000)).await.unwrap();
    let mut headers: Vec<(String, Option<String>)> = sfn
        .calls()
        .into_iter()
        .map(|(_, r)| (r.name.unwrap_or_default(), r.trace_header))
        .collect();
    headers.sort();
    assert_eq!(
        headers,
        [
            (
                "t-0".into(),
                Some("Root=1-00000000-000000000000000000000000;Sampled=1".into())
            ),
            ("t-1".into(), None),
            (
                "t-2".into(),
                Some("Root=1-00000000-000000000000000000000002;Sampled=1".into())
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn records_merged_into_one_execution_are_counted_and_every_record_has_one_outcome() {
    // Names from the body's "key": k1 twice (same payload), k2 twice (different payloads),
    // one bad body (DLQ), one already started (duplicate), one that keeps failing (reported).
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| match r.name.as_deref() {
            Some("k5") => Some(service("ExecutionAlreadyExists", 400)),
            Some("k6") => Some(service("", 500)),
            _ => None,
        }),
    );
    let c = config(&[
        ("EXECUTION_NAME", "body:/key"),
        ("MAX_ATTEMPTS", "1"),
        ("DLQ_URL", "https://dlq"),
    ]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let records = vec![
        record("a", r#"{"key":"k1","v":1}"#),
        record("b", r#"{"key":"k1","v":1}"#),
        record("c", r#"{"key":"k2","v":1}"#),
        record("d", r#"{"key":"k2","v":2}"#),
        record("e", "not json"),
        record("f", r#"{"key":"k5"}"#),
        record("g", r#"{"key":"k6"}"#),
    ];
    let outcome = starter.process(event(records), deadline_in(60_000)).await.unwrap();
    let r = &outcome.report;
    assert_eq!(
        (r.started, r.merged, r.duplicates, r.dead_lettered, r.failed),
        (2, 2, 1, 1, 1)
    );
    assert_eq!(
        r.received,
        r.started + r.duplicates + r.merged + r.failed + r.dead_lettered
    );
    assert_eq!(sfn.executions().len(), 2, "k1 and k2 start once each");
}

#[tokio::test(start_paused = true)]
async fn a_real_deadline_already_past_starts_nothing_and_reports_everything() {
    let sfn = FakeSfn::ok();
    let starter = Starter::new(config(&[]), sfn.clone(), Arc::new(FakeQueue::default()));
    let outcome = starter.process(batch(5), now_epoch_ms() - 1_000).await.unwrap();
    assert_eq!(outcome.report.started, 0);
    assert_eq!(failures(&outcome).len(), 5);
    assert!(sfn.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn fifo_groups_run_in_order_and_stop_at_their_first_failure() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| (r.name.as_deref() == Some("a2")).then(|| service("", 500))),
    );
    let c = config(&[("MAX_ATTEMPTS", "1")]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let fifo = |id: &str, group: &str| {
        json!({"messageId": id, "receiptHandle": format!("rh-{id}"), "body": "{}", "eventSource": "aws:sqs",
               "eventSourceARN": "arn:aws:sqs:us-east-1:1:work.fifo",
               "attributes": {"ApproximateReceiveCount": "1", "MessageGroupId": group}})
    };
    let records = vec![
        fifo("a1", "A"),
        fifo("b1", "B"),
        fifo("a2", "A"),
        fifo("b2", "B"),
        fifo("a3", "A"),
        fifo("b3", "B"),
    ];
    let outcome = starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome), vec!["a2".to_string(), "a3".to_string()]);
    let order: Vec<String> = sfn.calls().iter().filter_map(|(_, r)| r.name.clone()).collect();
    assert!(!order.contains(&"a3".to_string()), "a3 is never tried after a2 failed");
    let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
    assert!(pos("a1") < pos("a2") && pos("b1") < pos("b2") && pos("b2") < pos("b3"));
}

#[tokio::test(start_paused = true)]
async fn duplicate_message_ids_in_one_batch_start_once_and_are_listed_once() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| (r.name.as_deref() == Some("x")).then(|| service("", 503))),
    );
    let starter = Starter::new(
        config(&[("MAX_ATTEMPTS", "1")]),
        sfn.clone(),
        Arc::new(FakeQueue::default()),
    );
    let outcome = starter
        .process(
            event(vec![
                record("d", "{}"),
                record("d", "{}"),
                record("x", "{}"),
                record("x", "{}"),
            ]),
            deadline_in(60_000),
        )
        .await
        .unwrap();
    assert_eq!(sfn.calls().len(), 2);
    assert_eq!(failures(&outcome), vec!["x".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn express_counts_starts_after_unconfirmed_attempts() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|_, n| (n == 0).then_some(StartError::Timeout)),
    );
    let starter = Starter::new(
        config(&[("WORKFLOW_TYPE", "express")]),
        sfn,
        Arc::new(FakeQueue::default()),
    );
    let outcome = starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    assert_eq!(outcome.report.started, 1);
    assert_eq!(outcome.report.possible_duplicates, 1);
}

#[tokio::test(start_paused = true)]
async fn express_counts_starts_after_a_500_as_possible_duplicates() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|_, n| (n == 0).then(|| service("InternalFailure", 500))),
    );
    let starter = Starter::new(
        config(&[("WORKFLOW_TYPE", "express")]),
        sfn,
        Arc::new(FakeQueue::default()),
    );
    let outcome = starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    assert_eq!(outcome.report.possible_duplicates, 1);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_found_late_is_dead_lettered_in_the_close_phase() {
    // The first message takes the whole start window; the bad one is settled after the cutoff,
    // and the close phase, with its own share of the time, sends it to the DLQ.
    let sfn = FakeSfn::new(Duration::from_millis(1500), Box::new(|_, _| None));
    let queue = Arc::new(FakeQueue::default());
    let c = config(&[
        ("DLQ_URL", "http://q/dlq"),
        ("MAX_IN_FLIGHT", "1"),
        ("DEADLINE_MARGIN_MS", "1000"),
        ("CALL_TIMEOUT_MS", "900"),
        ("MAX_ATTEMPTS", "1"),
    ]);
    let starter = Starter::new(c, sfn, queue.clone());
    let t0 = Instant::now();
    let outcome = starter
        .process(
            event(vec![record("slow", "{}"), record("bad", "nope")]),
            deadline_in(1_500),
        )
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_millis(1_500), "{:?}", t0.elapsed());
    assert_eq!(failures(&outcome), vec!["slow".to_string()]);
    assert_eq!(dead_letter_codes(&queue), vec!["BodyNotJson".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn a_slow_queue_in_the_close_phase_still_answers_before_the_deadline() {
    // Every SQS call takes 5 s; the invocation has 3 s: nothing is lost, all is reported.
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| (r.name.as_deref() == Some("m-1")).then(|| service("", 500))),
    );
    let queue = Arc::new(FakeQueue {
        latency: Duration::from_secs(5),
        ..FakeQueue::default()
    });
    let c = config(&[("DLQ_URL", "http://q/dlq"), ("MAX_ATTEMPTS", "1")]);
    let starter = Starter::new(c, sfn, queue.clone());
    let t0 = Instant::now();
    let mut records: Vec<_> = (0..3).map(|i| record(&format!("m-{i}"), "{}")).collect();
    records.push(record("bad", "nope"));
    let outcome = starter.process(event(records), deadline_in(3_000)).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(3_000),
        "answered after {:?}",
        t0.elapsed()
    );
    assert_eq!(failures(&outcome), vec!["m-1".to_string(), "bad".to_string()]);
    assert!(queue.dead_letters.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_three_second_timeout_still_starts_messages_and_answers_in_time() {
    // The default margin (3 s) would leave nothing: it shrinks to half the budget.
    let sfn = FakeSfn::ok();
    let c = config(&[("STARTS_PER_SECOND", "100"), ("STARTS_BURST", "10")]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let t0 = Instant::now();
    let outcome = starter.process(batch(300), deadline_in(3_000)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(3_000));
    // About 9 + 100/s × 1.5 s.
    let started = outcome.report.started;
    assert!((140..=165).contains(&started), "{started} started");
    assert_eq!(failures(&outcome).len() as u64, 300 - started);
    assert_eq!(outcome.report.deferred, 300 - started, "the rest is deferred, untried");
}

#[tokio::test(start_paused = true)]
async fn deferred_messages_are_visible_again_at_once_and_failures_back_off() {
    // 10/s, burst 1: of 40 messages a few start, one fails, the rest is cut off.
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| (r.name.as_deref() == Some("m-0")).then(|| service("", 500))),
    );
    let queue = Arc::new(FakeQueue::default());
    let c = config(&[
        ("STARTS_PER_SECOND", "10"),
        ("STARTS_BURST", "1"),
        ("MAX_ATTEMPTS", "1"),
        ("DEADLINE_MARGIN_MS", "1000"),
        ("CALL_TIMEOUT_MS", "500"),
        ("RETRY_BASE_SECONDS", "20"),
        ("RETRY_MAX_SECONDS", "60"),
    ]);
    let starter = Starter::new(c, sfn, queue.clone());
    let mut records: Vec<_> = (0..40).map(|i| record(&format!("m-{i}"), "{}")).collect();
    records[0]["attributes"]["ApproximateReceiveCount"] = json!("3");
    let outcome = starter.process(event(records), deadline_in(2_000)).await.unwrap();
    let reported = failures(&outcome);
    assert!(reported.len() >= 25, "{}", reported.len());
    let visibility: HashMap<String, u32> = queue.visibility.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        visibility.len(),
        reported.len(),
        "every reported message gets a visibility"
    );
    for id in &reported {
        let seconds = visibility[&format!("rh-{id}")];
        if id == "m-0" {
            assert!(seconds < 60, "the failure backs off: {seconds}");
        } else {
            assert_eq!(seconds, 0, "{id} was never tried: visible again at once");
        }
    }
    assert_eq!(outcome.report.deferred as usize, reported.len() - 1);
    assert!(queue.batches.lock().unwrap().iter().all(|n| *n <= 10));
}

/// A starved instance (its bucket spent, its rate low after throttles) defers its batch at
/// once; were the messages visible again at once, the mapping would deliver them back within
/// milliseconds and spend `maxReceiveCount` before any slot came (the chaos test's redrive).
#[tokio::test(start_paused = true)]
async fn a_starved_instance_defers_until_its_next_slot() {
    let queue = Arc::new(FakeQueue::default());
    let c = config(&[
        ("STARTS_PER_SECOND", "0.25"),
        ("STARTS_BURST", "1"),
        ("DEADLINE_MARGIN_MS", "1000"),
        ("CALL_TIMEOUT_MS", "500"),
        ("RETRY_MAX_SECONDS", "60"),
    ]);
    let starter = Starter::new(c, FakeSfn::ok(), queue.clone());
    let first = starter.process(batch(1), deadline_in(2_000)).await.unwrap();
    assert_eq!(first.report.started, 1, "the burst");
    // The next token is 4 s away (0.25/s), past this invocation's 1 s window.
    let t0 = Instant::now();
    let outcome = starter.process(batch(5), deadline_in(2_000)).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "nothing to wait for: it answers at once"
    );
    assert_eq!(failures(&outcome).len(), 5);
    assert_eq!(outcome.report.deferred, 5);
    let visibility: Vec<u32> = queue.visibility.lock().unwrap().iter().map(|(_, s)| *s).collect();
    assert_eq!(visibility, vec![4; 5], "back when the next slot is due, not at once");
}

#[tokio::test(start_paused = true)]
async fn a_fifo_group_reports_the_rest_with_the_groups_backoff() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| (r.name.as_deref() == Some("a1")).then(|| service("", 500))),
    );
    let queue = Arc::new(FakeQueue::default());
    let c = config(&[
        ("MAX_ATTEMPTS", "1"),
        ("RETRY_BASE_SECONDS", "40"),
        ("RETRY_MAX_SECONDS", "600"),
    ]);
    let starter = Starter::new(c, sfn, queue.clone());
    let fifo = |id: &str, group: &str| {
        let mut r = record(id, "{}");
        r["eventSourceARN"] = json!("arn:aws:sqs:us-east-1:123456789012:work.fifo");
        r["attributes"]["MessageGroupId"] = json!(group);
        r["attributes"]["ApproximateReceiveCount"] = json!("4");
        r
    };
    let records = vec![
        fifo("a0", "a"),
        fifo("a1", "a"),
        fifo("a2", "a"),
        fifo("a3", "a"),
        fifo("b0", "b"),
    ];
    let outcome = starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome), vec!["a1", "a2", "a3"]);
    let visibility: HashMap<String, u32> = queue.visibility.lock().unwrap().iter().cloned().collect();
    let group: Vec<u32> = ["a1", "a2", "a3"]
        .iter()
        .map(|id| visibility[&format!("rh-{id}")])
        .collect();
    assert!(
        group.iter().all(|s| *s == group[0]),
        "one backoff for the group: {group:?}"
    );
    assert_eq!(outcome.report.deferred, 2, "a2 and a3 were never tried");
}

#[tokio::test(start_paused = true)]
async fn a_call_slower_than_the_timeout_counts_as_a_timeout() {
    let sfn = FakeSfn::new(Duration::from_secs(10), Box::new(|_, _| None));
    let c = config(&[("CALL_TIMEOUT_MS", "500"), ("MAX_ATTEMPTS", "2")]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let outcome = starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome).len(), 1);
    assert_eq!(sfn.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_records_in_one_batch() {
    let sfn = FakeSfn::ok();
    let c = config(&[
        ("STARTS_PER_SECOND", "6000"),
        ("STARTS_BURST", "6000"),
        ("MAX_IN_FLIGHT", "256"),
    ]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let outcome = starter.process(batch(10_000), deadline_in(600_000)).await.unwrap();
    assert!(failures(&outcome).is_empty());
    assert_eq!(sfn.executions().len(), 10_000);
}

#[tokio::test(start_paused = true)]
async fn an_event_that_is_not_sqs_is_an_error_not_a_panic() {
    let starter = Starter::new(config(&[]), FakeSfn::ok(), Arc::new(FakeQueue::default()));
    let s3 = event(vec![json!({"messageId": "a", "eventSource": "aws:s3"})]);
    assert!(starter.process(s3, deadline_in(1000)).await.is_err());
    let no_id = event(vec![json!({"body": "{}"})]);
    assert!(starter.process(no_id, deadline_in(1000)).await.is_err());
    assert!(
        serde_json::from_value::<SqsEvent>(json!({"detail-type": "x"})).is_err(),
        "the runtime rejects it"
    );
}

#[test]
fn the_response_lists_each_retry_id_once_in_order() {
    let m = |id: &str| Message {
        id: id.into(),
        ..Message::default()
    };
    let messages = vec![m("a"), m("b"), m("a"), m("c")];
    let d = vec![
        Disposition::Retry("x".into()),
        Disposition::Started,
        Disposition::Retry("x".into()),
        Disposition::DeadLettered,
    ];
    let r = respond(&messages, &d);
    let ids: Vec<_> = r
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, vec!["a"]);
    assert!(respond(&[], &[]).batch_item_failures.is_empty());
}

// ---- Bad input: each case gets a clear outcome and loses nothing. ----

fn dead_letter_codes(queue: &FakeQueue) -> Vec<String> {
    queue
        .dead_letters
        .lock()
        .unwrap()
        .iter()
        .map(|l| match &l.attributes["sfn-pacer.error-code"] {
            crate::close::dead_letter::AttributeValue::String(code, _) => code.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn bad_input_empty_and_huge_bodies_are_dead_lettered_with_their_reason() {
    let queue = Arc::new(FakeQueue::default());
    let sfn = FakeSfn::ok();
    let starter = Starter::new(config(&[("DLQ_URL", "http://q/dlq")]), sfn.clone(), queue.clone());
    // 1 MiB less room for the reason attributes: the dead letter fits SQS's limit.
    let big = format!("\"{}\"", "x".repeat(1024 * 1024 - 2_000));
    // Exactly 1 MiB: with the reason it cannot fit; reported, never lost.
    let mib = format!("\"{}\"", "x".repeat(1024 * 1024 - 2));
    let records = vec![
        record("empty", ""),
        record("big", &big),
        record("huge", &mib),
        record("ok", "{}"),
    ];
    let outcome = starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome), vec!["huge".to_string()]);
    assert_eq!(
        dead_letter_codes(&queue),
        vec!["BodyNotJson".to_string(), "InputTooLarge".to_string()]
    );
    let letters = queue.dead_letters.lock().unwrap();
    assert_eq!(letters[1].body, big, "the body goes to the DLQ unchanged");
    assert_eq!(sfn.executions().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_input_a_missing_body_pointer_is_dead_lettered() {
    let queue = Arc::new(FakeQueue::default());
    let c = config(&[("DLQ_URL", "http://q/dlq"), ("EXECUTION_NAME", "body:/order/id")]);
    let starter = Starter::new(c, FakeSfn::ok(), queue.clone());
    let records = vec![
        record("has", r#"{"order":{"id":"o-1"}}"#),
        record("lacks", r#"{"order":{}}"#),
    ];
    let outcome = starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert_eq!(
        outcome.dispositions,
        vec![Disposition::Started, Disposition::DeadLettered]
    );
    assert_eq!(dead_letter_codes(&queue), vec!["NoUsableName".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn bad_input_a_name_key_of_forbidden_characters_still_starts_under_a_valid_name() {
    let sfn = FakeSfn::ok();
    let c = config(&[("EXECUTION_NAME", "attribute:Key")]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let key = " ?*<>{}[]\"#%\\^|~`$&,;:/\t\u{1}é";
    let mut r = record("m", "{}");
    r["messageAttributes"] = json!({"Key": {"stringValue": key, "dataType": "String"}});
    let outcome = starter.process(event(vec![r]), deadline_in(60_000)).await.unwrap();
    assert_eq!(outcome.dispositions, vec![Disposition::Started]);
    let name = sfn.executions().keys().next().unwrap().clone();
    assert!(crate::plan::name::is_valid_name(&name), "{name}");
}

#[tokio::test(start_paused = true)]
async fn bad_input_binary_attributes_that_are_not_utf8() {
    // As a name key: hashed into a valid name. In the envelope: base64, as SQS sends it.
    let sfn = FakeSfn::ok();
    let c = config(&[("EXECUTION_NAME", "attribute:Key"), ("INPUT", "envelope")]);
    let starter = Starter::new(c, sfn.clone(), Arc::new(FakeQueue::default()));
    let mut r = record("m", "not json either");
    r["messageAttributes"] = json!({"Key": {"binaryValue": "//79", "dataType": "Binary"}});
    let outcome = starter.process(event(vec![r]), deadline_in(60_000)).await.unwrap();
    assert_eq!(outcome.dispositions, vec![Disposition::Started]);
    let (name, input) = sfn.executions().into_iter().next().unwrap();
    assert!(crate::plan::name::is_valid_name(&name));
    let input: serde_json::Value = serde_json::from_str(&input).unwrap();
    assert_eq!(input["messageAttributes"]["Key"]["binaryValue"], "//79");
    assert_eq!(input["body"], "not json either");
}

#[test]
fn bad_input_invalid_unicode_in_the_event_is_a_clear_error_not_a_panic() {
    // A lone surrogate cannot be decoded: the runtime rejects the event (the whole batch is
    // retried, nothing is lost). SQS itself never delivers such characters.
    let raw = r#"{"Records":[{"messageId":"a","body":"{}","attributes":{"x":"\ud800"}}]}"#;
    let error = serde_json::from_str::<SqsEvent>(raw).unwrap_err();
    assert!(error.is_syntax(), "{error}");
    assert!(error.to_string().contains("column"), "the error says where: {error}");
}

mod coordinated {
    use super::*;
    use crate::start::budget::Store;
    use crate::start::clock::Clock;
    use crate::start::memory::MemoryStore;

    fn coordinated(pairs: &[(&str, &str)], sfn: Arc<FakeSfn>, store: Arc<MemoryStore>) -> Starter {
        coordinated_with(pairs, sfn, store, Arc::new(FakeQueue::default()))
    }

    /// A coordinated starter whose pacer's clock follows the paused runtime clock.
    fn coordinated_with(
        pairs: &[(&str, &str)],
        sfn: Arc<FakeSfn>,
        store: Arc<MemoryStore>,
        queue: Arc<FakeQueue>,
    ) -> Starter {
        let mut all = vec![("COORDINATION_TABLE", "coordination")];
        all.extend_from_slice(pairs);
        Starter::coordinated(config(&all), sfn, queue, store)
            .with_clock(Clock::following_runtime(now_epoch_ms() as f64 / 1e3))
    }

    #[tokio::test(start_paused = true)]
    async fn the_give_back_comes_after_the_close_phase_with_the_time_left() {
        // 10/s shared, a 3.5 s deadline: starts until the cutoff at 1.75 s; then the deferred
        // messages' visibility (the close phase); then the last lease's unused slot goes back.
        let pairs = [("STARTS_PER_SECOND", "10"), ("STARTS_BURST", "2")];
        let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(5)));
        let queue = Arc::new(FakeQueue {
            latency: Duration::from_millis(50),
            ..FakeQueue::default()
        });
        let starter = coordinated_with(&pairs, FakeSfn::ok(), store.clone(), queue.clone());
        // Near the cutoff the table turns slow: a give-back before the close phase would take
        // the close phase's time.
        let slow = {
            let store = store.clone();
            tokio::spawn(async move {
                sleep(Duration::from_millis(1_500)).await;
                store.set_faults(crate::start::memory::TableFaults {
                    latency_min: Duration::from_secs(10),
                    latency_max: Duration::from_secs(10),
                    ..Default::default()
                });
            })
        };
        let t0 = Instant::now();
        let outcome = starter.process(batch(50), deadline_in(3_500)).await.unwrap();
        slow.await.unwrap();
        assert!(t0.elapsed() <= Duration::from_millis(3_400), "{:?}", t0.elapsed());
        let deferred = failures(&outcome).len();
        assert!(deferred > 20, "{deferred} deferred");
        assert_eq!(
            queue.visibility.lock().unwrap().len(),
            deferred,
            "every deferred message comes back when a slot is expected"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_instance_uses_the_whole_shared_budget_not_its_static_share() {
        // 100/s told to 10 instances: the static split gives this one 10/s (21 starts ≈ 2 s).
        let pairs = [
            ("STARTS_PER_SECOND", "100"),
            ("STARTS_BURST", "10"),
            ("MAX_CONCURRENCY", "10"),
        ];
        let store = Arc::new(MemoryStore::new().with_latency(Duration::from_millis(5), Duration::from_millis(10)));
        let starter = coordinated(&pairs, FakeSfn::ok(), store.clone());
        let t0 = Instant::now();
        let outcome = starter.process(batch(21), deadline_in(60_000)).await.unwrap();
        let elapsed = t0.elapsed();
        assert_eq!(outcome.report.started, 21);
        // Shared: 9 at once (burst 10 less 1 of reserve), then 12 at 100/s: about 0.15 s.
        assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
        assert!(outcome.report.lease_calls > 0);
        assert_eq!(outcome.report.fallbacks, 0);
        assert!((outcome.report.shared_rate_per_second - 100.0).abs() < 1e-9);
        let item = store.get("start-execution-standard").await.unwrap().unwrap();
        assert_eq!(
            (item.rate_per_second, item.burst),
            (100.0, 10.0),
            "created from the config"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_lower_the_shared_rate_and_nothing_is_lost() {
        let sfn = FakeSfn::new(
            Duration::from_millis(20),
            Box::new(|_, n| (n < 5).then(|| service("ThrottlingException", 400))),
        );
        let store = Arc::new(MemoryStore::new());
        let pairs = [
            ("STARTS_PER_SECOND", "200"),
            ("STARTS_BURST", "20"),
            ("MAX_ATTEMPTS", "10"),
        ];
        let starter = coordinated(&pairs, sfn.clone(), store.clone());
        let outcome = starter.process(batch(30), deadline_in(60_000)).await.unwrap();
        assert!(failures(&outcome).is_empty(), "{:?}", failures(&outcome));
        assert_eq!(sfn.executions().len(), 30);
        assert_eq!(outcome.report.throttled, 5);
        let item = store.get("start-execution-standard").await.unwrap().unwrap();
        assert!(item.factor < 1.0, "the shared rate went down: {}", item.factor);
        assert!(item.version > 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_table_paces_at_the_static_split_and_reports_it() {
        let store = Arc::new(MemoryStore::new());
        store.set_failure(Some(
            "AccessDeniedException: not authorized to perform dynamodb:UpdateItem",
        ));
        let pairs = [
            ("STARTS_PER_SECOND", "100"),
            ("STARTS_BURST", "10"),
            ("MAX_CONCURRENCY", "10"),
        ];
        let starter = coordinated(&pairs, FakeSfn::ok(), store);
        let t0 = Instant::now();
        let outcome = starter.process(batch(21), deadline_in(60_000)).await.unwrap();
        assert_eq!(outcome.report.started, 21);
        assert_eq!(outcome.report.fallbacks, 21);
        // The static split: 10/s with a burst of 1 for this instance.
        assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn no_start_after_the_cutoff_even_while_waiting_for_the_budget() {
        // 10/s shared, a 3.5 s deadline: the 3 s margin shrinks to half of it, 1.75 s of starts.
        let pairs = [
            ("STARTS_PER_SECOND", "10"),
            ("STARTS_BURST", "2"),
            ("CALL_TIMEOUT_MS", "200"),
        ];
        let store = Arc::new(MemoryStore::new());
        let sfn = FakeSfn::ok();
        let starter = coordinated(&pairs, sfn.clone(), store);
        let t0 = Instant::now();
        let outcome = starter.process(batch(50), deadline_in(3_500)).await.unwrap();
        assert!(t0.elapsed() < Duration::from_millis(3_500), "{:?}", t0.elapsed());
        let started = outcome.report.started as usize;
        assert!((10..=20).contains(&started), "{started} started");
        assert_eq!(failures(&outcome).len(), 50 - started);
        let cutoff = t0 + Duration::from_millis(1_750);
        assert!(sfn.calls().iter().all(|(t, _)| *t <= cutoff));
    }
}

mod claim_check {
    use super::*;
    use crate::plan::claim_check::memory::MemoryObjects;

    fn starter_with(objects: Arc<MemoryObjects>, sfn: Arc<FakeSfn>, queue: Arc<FakeQueue>) -> Starter {
        let c = config(&[("CLAIM_CHECK_BUCKET", "inputs"), ("DLQ_URL", "http://q/dlq")]);
        Starter::new(c, sfn, queue).with_claim_check(objects)
    }

    #[tokio::test(start_paused = true)]
    async fn an_input_over_the_limit_starts_with_a_pointer_to_it_in_s3() {
        let objects = Arc::new(MemoryObjects::default());
        let sfn = FakeSfn::ok();
        let starter = starter_with(objects.clone(), sfn.clone(), Arc::new(FakeQueue::default()));
        let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(300_000));
        let outcome = starter
            .process(
                event(vec![record("big", &big), record("small", "{}")]),
                deadline_in(60_000),
            )
            .await
            .unwrap();
        assert_eq!(outcome.report.started, 2);
        let input: serde_json::Value = serde_json::from_str(&sfn.executions()["big"]).unwrap();
        let pointer = &input["claimCheck"];
        assert_eq!(pointer["bucket"], "inputs");
        assert_eq!(pointer["size"], big.len());
        let key = pointer["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("sfn-pacer/inputs/"), "{key}");
        assert_eq!(
            objects.objects.lock().unwrap()[&("inputs".to_string(), key)],
            big.as_bytes()
        );
        assert_eq!(sfn.executions()["small"], "{}", "small inputs are passed as they are");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_store_reports_the_message_for_a_retry() {
        let objects = Arc::new(MemoryObjects {
            failing: Some("AccessDenied".into()),
            ..MemoryObjects::default()
        });
        let sfn = FakeSfn::ok();
        let starter = starter_with(objects, sfn.clone(), Arc::new(FakeQueue::default()));
        let big = format!("\"{}\"", "x".repeat(300_000));
        let outcome = starter
            .process(event(vec![record("big", &big)]), deadline_in(60_000))
            .await
            .unwrap();
        assert_eq!(failures(&outcome), vec!["big".to_string()]);
        assert!(sfn.executions().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_letter_too_large_for_sqs_goes_with_its_body_in_s3_and_its_reason() {
        let objects = Arc::new(MemoryObjects::default());
        let queue = Arc::new(FakeQueue::default());
        let starter = starter_with(objects.clone(), FakeSfn::ok(), queue.clone());
        // 1 MiB, not JSON: a permanent failure whose dead letter cannot fit SQS with its reason.
        let mib = "x".repeat(1024 * 1024);
        let outcome = starter
            .process(event(vec![record("huge", &mib)]), deadline_in(60_000))
            .await
            .unwrap();
        assert!(failures(&outcome).is_empty(), "dead-lettered, acknowledged");
        let letters = queue.dead_letters.lock().unwrap();
        let letter = &letters[0];
        let pointer: serde_json::Value = serde_json::from_str(&letter.body).unwrap();
        let key = pointer["claimCheck"]["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("sfn-pacer/dead-letters/"), "{key}");
        let text = |name: &str| match &letter.attributes[name] {
            crate::close::dead_letter::AttributeValue::String(v, _) => v.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(text("sfn-pacer.error-code"), "BodyNotJson");
        assert_eq!(text("sfn-pacer.claim-check"), format!("s3://inputs/{key}"));
        assert_eq!(
            objects.objects.lock().unwrap()[&("inputs".to_string(), key)],
            mib.as_bytes()
        );
    }
}

#[path = "handler_batch_tests.rs"]
mod batch;

#[path = "handler_cap_tests.rs"]
mod cap;
