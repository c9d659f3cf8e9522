//! The cap on running executions through the handler: the handler's fakes, the in-memory table
//! (conditional writes, all-or-nothing transactions, DynamoDB's limits) and a paused clock.

use super::*;
use crate::close::dead_letter::AttributeValue;
use crate::plan::event::{DUE_AT_ATTRIBUTE, MESSAGE_ID_ATTRIBUTE};
use crate::start::memory::MemoryStore;
use crate::start::running::describe::Described;
use crate::start::running::tests::{history, status_change, FakeDescriber};
use crate::start::running::{execution_arn, HolderState, Item, RunningStore};

const KEY: &str = "demo";

fn capped(cap: u32, more: &[(&str, &str)]) -> Config {
    let cap = cap.to_string();
    let mut pairs = vec![
        ("COORDINATION_TABLE", "coordination"),
        ("MAX_RUNNING_EXECUTIONS", cap.as_str()),
        ("RUNNING_EXPIRY_SECONDS", "60"),
    ];
    pairs.extend_from_slice(more);
    config(&pairs)
}

struct Capped {
    starter: Starter,
    sfn: Arc<FakeSfn>,
    queue: Arc<FakeQueue>,
    store: Arc<MemoryStore>,
    describer: Arc<FakeDescriber>,
}

fn with(config: Config, sfn: Arc<dyn StartExecution>, fake: Arc<FakeSfn>) -> Capped {
    let queue = Arc::new(FakeQueue::default());
    let store = Arc::new(MemoryStore::new());
    let describer = Arc::new(FakeDescriber::default());
    let starter = Starter::new(config, sfn, queue.clone())
        .with_claims(store.clone())
        .with_cap(store.clone(), describer.clone(), store.clone());
    Capped {
        starter,
        sfn: fake,
        queue,
        store,
        describer,
    }
}

fn setup(config: Config) -> Capped {
    let sfn = FakeSfn::ok();
    with(config, sfn.clone(), sfn)
}

impl Capped {
    /// Slots counted by the shards, all together.
    async fn running(&self) -> u64 {
        self.store.view(KEY).await.unwrap().map_or(0, |v| v.held())
    }

    fn holders(&self) -> Vec<String> {
        let mut names: Vec<String> = self.store.held_holders(KEY).into_iter().map(|h| h.name).collect();
        names.sort();
        names
    }

    fn visibility(&self, id: &str) -> Option<u32> {
        let handle = format!("rh-{id}");
        self.queue
            .visibility
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(h, _)| *h == handle)
            .map(|(_, s)| *s)
    }

    /// Delivers the status change of the execution `name`, as EventBridge would.
    async fn end(&self, name: &str) -> serde_json::Value {
        let event = status_change(ARN, name, "SUCCEEDED", 0);
        self.starter
            .dispatch(LambdaEvent::new(event, lambda_runtime::Context::default()))
            .await
            .unwrap()
    }
}

fn received(id: &str, receive_count: u32) -> serde_json::Value {
    let mut r = record(id, "{}");
    r["attributes"]["ApproximateReceiveCount"] = json!(receive_count.to_string());
    r
}

#[tokio::test(start_paused = true)]
async fn no_more_executions_start_than_the_cap_and_no_start_slot_is_spent_waiting() {
    let c = setup(capped(3, &[("STARTS_PER_SECOND", "10"), ("STARTS_BURST", "6")]));
    // Executions of this cap ran 60 s before: λ̂ = 3 / 60 s.
    history(&c.store, KEY, 3, 60_000).await;
    let outcome = c.starter.process(batch(10), deadline_in(60_000)).await.unwrap();
    let r = &outcome.report;
    assert_eq!((r.started, r.waiting_for_slot, r.running), (3, 7, Some(3)));
    assert_eq!(failures(&outcome).len(), 7);
    assert_eq!(c.sfn.executions().len(), 3);
    assert_eq!(c.holders().len(), 3, "each started execution holds its slot");
    assert_eq!(c.running().await, 3);
    // Burst 6 (less 1 of reserve): 3 spent on starts, the waiting ones put theirs back.
    let now = Instant::now();
    let pacer = c.starter.pacer();
    assert!(pacer.reserve(now, now).is_some() && pacer.reserve(now, now).is_some());
    assert!(pacer.reserve(now, now).is_none(), "two tokens were left, no more");
    // The waiting messages come back one expected completion apart (3 slots / 60 s: every 20 s, at
    // the line's pace).
    let mut waits: Vec<u32> = (0..10).filter_map(|i| c.visibility(&format!("m-{i}"))).collect();
    waits.sort();
    let expected: Vec<u32> = (1..=7)
        .map(|i| (f64::from(i) * 20.0 / crate::start::running::line::LINE_PACE).round() as u32)
        .collect();
    assert_eq!(waits, expected);
}

#[tokio::test(start_paused = true)]
async fn before_any_execution_ended_waiting_messages_probe_with_doubling_waits() {
    let c = setup(capped(3, &[]));
    c.starter.process(batch(10), deadline_in(60_000)).await.unwrap();
    let waits: Vec<u32> = (0..10).filter_map(|i| c.visibility(&format!("m-{i}"))).collect();
    assert_eq!(waits.len(), 7);
    assert!(
        waits.iter().all(|w| (3..=5).contains(w)),
        "PROBE_WAIT, jittered: {waits:?}"
    );
    let back: Vec<serde_json::Value> = (0..10).map(|i| received(&format!("m-{i}"), 3)).collect();
    c.starter.process(event(back), deadline_in(60_000)).await.unwrap();
    let waits: Vec<u32> = (0..10).filter_map(|i| c.visibility(&format!("m-{i}"))).collect();
    assert!(
        waits.iter().any(|w| (12..=20).contains(w)),
        "doubled twice at the third receive: {waits:?}"
    );
    assert_eq!(c.sfn.executions().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_release_event_frees_a_slot_for_the_next_message_and_a_duplicate_frees_nothing() {
    let c = setup(capped(1, &[]));
    let first = c.starter.process(batch(2), deadline_in(60_000)).await.unwrap();
    assert_eq!(first.report.started, 1);
    let started = c.holders()[0].clone();
    let answer = c.end(&started).await;
    assert_eq!(answer["outcome"], "Freed");
    assert_eq!(c.end(&started).await["outcome"], "Duplicate");
    assert_eq!(c.running().await, 0);
    tokio::time::advance(Duration::from_secs(20)).await;
    // The waiting message comes back (received twice now) and takes the slot.
    let waiting = if started == "m-0" { "m-1" } else { "m-0" };
    let again = c
        .starter
        .process(event(vec![received(waiting, 2)]), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(again.report.started, 1);
    assert_eq!(c.holders(), [waiting.to_string()]);
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_message_keeps_its_one_slot() {
    let c = setup(capped(5, &[]));
    c.starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    // A concurrent duplicate delivery, while the first may still be starting it: it waits.
    let early = c
        .starter
        .process(event(vec![received("m-0", 2)]), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(failures(&early), ["m-0"]);
    tokio::time::advance(Duration::from_secs(10)).await;
    let later = c
        .starter
        .process(event(vec![received("m-0", 3)]), deadline_in(60_000))
        .await
        .unwrap();
    assert!(
        failures(&later).is_empty(),
        "Standard: the same execution, acknowledged"
    );
    assert_eq!(c.running().await, 1, "no second slot");
    assert_eq!(c.sfn.executions().len(), 1);
}

/// StartExecution applied, its answer lost (a timeout), for the first `lost` calls.
struct LosesAnswers {
    inner: Arc<FakeSfn>,
    lost: Mutex<usize>,
}

#[async_trait]
impl StartExecution for LosesAnswers {
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError> {
        let started = self.inner.start_execution(request).await;
        let mut lost = self.lost.lock().unwrap();
        if *lost > 0 {
            *lost -= 1;
            return Err(StartError::Timeout);
        }
        started
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_start_answer_keeps_the_slot_and_the_retry_takes_none() {
    let fake = FakeSfn::ok();
    let lossy = Arc::new(LosesAnswers {
        inner: fake.clone(),
        lost: Mutex::new(1),
    });
    let c = with(capped(5, &[]), lossy, fake);
    let outcome = c.starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    assert_eq!(
        outcome.report.started, 1,
        "the retry in the invocation finds it running"
    );
    assert_eq!(c.running().await, 1);
    // Every attempt's answer lost: the message is reported, its slot kept (it may run).
    let fake = FakeSfn::ok();
    let lossy = Arc::new(LosesAnswers {
        inner: fake.clone(),
        lost: Mutex::new(100),
    });
    let c = with(capped(5, &[("MAX_ATTEMPTS", "3")]), lossy, fake);
    let outcome = c.starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome), ["m-0"]);
    assert_eq!(c.holders(), ["m-0"]);
    assert_eq!(c.running().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_surely_failed_gives_its_slot_back_at_once() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, n| match r.name.as_deref() {
            Some("m-0") => Some(service("InvalidExecutionInput", 400)),
            Some("m-1") if n < 3 => Some(service("ThrottlingException", 400)),
            Some("m-2") => Some(service("AccessDeniedException", 400)),
            _ => None,
        }),
    );
    let c = with(capped(2, &[("DLQ_URL", "https://sqs/dlq")]), sfn.clone(), sfn);
    let outcome = c.starter.process(batch(3), deadline_in(60_000)).await.unwrap();
    assert_eq!(outcome.dispositions[0], Disposition::DeadLettered);
    assert_eq!(
        outcome.dispositions[1],
        Disposition::Started,
        "throttled, given back, retried"
    );
    assert!(matches!(outcome.dispositions[2], Disposition::Retry(_)));
    assert_eq!(c.holders(), ["m-1"], "only the started execution holds a slot");
    assert_eq!(c.running().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_batch_execution_takes_one_slot() {
    let c = setup(capped(1, &[("MESSAGES_PER_EXECUTION", "5")]));
    let outcome = c.starter.process(batch(10), deadline_in(60_000)).await.unwrap();
    assert_eq!((outcome.report.executions, outcome.report.started), (1, 5));
    assert_eq!(outcome.report.waiting_for_slot, 5);
    assert_eq!(c.running().await, 1);
}

#[tokio::test(start_paused = true)]
async fn fifo_groups_wait_at_the_cap_in_order() {
    let c = setup(capped(1, &[]));
    let fifo = |id: &str, group: &str| {
        json!({"messageId": id, "receiptHandle": format!("rh-{id}"), "body": "{}", "eventSource": "aws:sqs",
               "eventSourceARN": "arn:aws:sqs:us-east-1:1:work.fifo",
               "attributes": {"ApproximateReceiveCount": "1", "MessageGroupId": group}})
    };
    let records = vec![fifo("a1", "A"), fifo("b1", "B"), fifo("a2", "A"), fifo("b2", "B")];
    let outcome = c.starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert_eq!(outcome.report.started, 1);
    let started = c.holders()[0].clone();
    let group = &started[..1];
    let (second, other_head, other_tail) = match group {
        "a" => ("a2", "b1", "b2"),
        _ => ("b2", "a1", "a2"),
    };
    assert!(c
        .sfn
        .calls()
        .iter()
        .all(|(_, r)| r.name.as_deref() == Some(started.as_str())));
    // The started group's next message and the other group's head wait at the cap; the other
    // group's tail waits behind its head, untried.
    for id in [second, other_head] {
        assert!(c.visibility(id).unwrap() >= 1, "{id} waits for a slot");
    }
    assert_eq!(
        c.visibility(other_tail),
        Some(0),
        "SQS holds it behind its group's head"
    );
    assert_eq!(outcome.report.waiting_for_slot, 2);
}

#[tokio::test(start_paused = true)]
async fn fresh_messages_join_the_back_of_the_line_while_waiting_ones_try_first() {
    let c = setup(capped(1, &[]));
    let first = c.starter.process(batch(3), deadline_in(60_000)).await.unwrap();
    assert_eq!(first.report.started, 1);
    let started = c.holders()[0].clone();
    c.end(&started).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    // A waiting message comes back with a fresh one: the waiting one takes the freed slot; the
    // fresh one joins the back without trying.
    let waiting = ["m-0", "m-1", "m-2"].into_iter().find(|id| *id != started).unwrap();
    let records = vec![record("fresh", "{}"), received(waiting, 2)];
    let outcome = c.starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert_eq!(c.holders(), [waiting.to_string()]);
    assert_eq!(failures(&outcome), ["fresh"]);
    assert!(
        c.sfn.calls().iter().all(|(_, r)| r.name.as_deref() != Some("fresh")),
        "the fresh one did not try"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_message_is_re_sent_before_its_last_receive_with_its_identity() {
    let c = setup(capped(1, &[("MAX_RECEIVE_COUNT", "5")]));
    c.starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    let mut last = received("w-1", 4);
    last["attributes"]["AWSTraceHeader"] = json!("Root=1-5759e988-bd862e3fe1be46a994272793");
    last["messageAttributes"] = json!({"OrderId": {"stringValue": "o-9", "dataType": "String"}});
    let records = vec![received("w-0", 3), last];
    let outcome = c.starter.process(event(records), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome), ["w-0"], "w-1 was re-sent and acknowledged");
    assert_eq!(outcome.dispositions[1], Disposition::Resent);
    assert_eq!((outcome.report.waiting_for_slot, outcome.report.resent), (2, 1));
    let resent = c.queue.resent.lock().unwrap().clone();
    assert_eq!(resent.len(), 1);
    let (queue_arn, letter) = &resent[0];
    assert_eq!(queue_arn, QUEUE_ARN, "back to its own queue");
    let text = |name: &str| match &letter.attributes[name] {
        AttributeValue::String(v, _) | AttributeValue::Number(v, _) => v.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(text(MESSAGE_ID_ATTRIBUTE), "w-1");
    assert_eq!(text("OrderId"), "o-9");
    assert!(letter.trace_header.is_some() && letter.delay_seconds >= 1);
    let due_at: u64 = text(DUE_AT_ATTRIBUTE).parse().unwrap();
    assert!(due_at > now_epoch_ms());

    // It comes back as a new message, early: it waits until its due time without trying.
    let back = |id: &str, due_at: u64| {
        let mut r = record(id, "{}");
        r["messageAttributes"] = json!({
            MESSAGE_ID_ATTRIBUTE: {"stringValue": "w-1", "dataType": "String"},
            DUE_AT_ATTRIBUTE: {"stringValue": due_at.to_string(), "dataType": "Number"},
        });
        r
    };
    let early = c
        .starter
        .process(event(vec![back("w-1-again", due_at + 30_000)]), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(failures(&early), ["w-1-again"]);
    assert!(c.visibility("w-1-again").unwrap() >= 29);
    // Due, with a free slot: it starts under its original name.
    let held = c.holders()[0].clone();
    c.end(&held).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let due = c
        .starter
        .process(event(vec![back("w-1-due", now_epoch_ms())]), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(due.report.started, 1);
    assert_eq!(c.holders(), ["w-1"]);
}

#[tokio::test(start_paused = true)]
async fn a_fifo_message_is_never_re_sent_and_waits_as_long_as_sqs_allows_before_its_last_receive() {
    let c = setup(capped(1, &[("MAX_RECEIVE_COUNT", "5")]));
    c.starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    let mut head = received("f-1", 4);
    head["eventSourceARN"] = json!("arn:aws:sqs:us-east-1:1:work.fifo");
    head["attributes"]["MessageGroupId"] = json!("g");
    let outcome = c.starter.process(event(vec![head]), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&outcome), ["f-1"]);
    assert!(c.queue.resent.lock().unwrap().is_empty());
    assert_eq!(c.visibility("f-1"), Some(43_199), "12 hours");
}

#[tokio::test(start_paused = true)]
async fn with_no_execution_name_each_delivery_is_named_before_its_start() {
    let c = setup(capped(5, &[("EXECUTION_NAME", "none")]));
    c.starter.process(batch(3), deadline_in(60_000)).await.unwrap();
    let mut names: Vec<String> = c.sfn.calls().into_iter().filter_map(|(_, r)| r.name).collect();
    names.sort();
    assert_eq!(names.len(), 3);
    assert_eq!(c.holders(), names, "the holders are the executions' names");
    assert!(names.iter().all(|n| n.len() == 36), "UUIDs: {names:?}");
}

#[tokio::test(start_paused = true)]
async fn a_full_cap_sweeps_slots_whose_start_never_happened() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| (r.name.as_deref() == Some("m-0")).then_some(StartError::Timeout)),
    );
    let c = with(capped(1, &[("MAX_ATTEMPTS", "1")]), sfn.clone(), sfn);
    let lost = c.starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&lost), ["m-0"]);
    assert_eq!(c.running().await, 1, "kept: it may run");
    tokio::time::advance(Duration::from_secs(61)).await;
    // The cap is full: the invocation sweeps; m-0 does not exist (the start never happened).
    let outcome = c
        .starter
        .process(event(vec![record("m-1", "{}")]), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(outcome.report.slots_reclaimed, 1);
    assert_eq!(c.describer.calls(), 1);
    assert_eq!(c.running().await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_event_reclaims_and_other_events_change_nothing() {
    let c = setup(capped(2, &[]));
    c.starter.process(batch(2), deadline_in(60_000)).await.unwrap();
    c.describer.set_arn(
        &execution_arn(ARN, "m-0"),
        Described::Ended {
            redrive_count: 0,
            stop_ms: None,
        },
    );
    c.describer
        .set_arn(&execution_arn(ARN, "m-1"), Described::Running { redrive_count: 0 });
    tokio::time::advance(Duration::from_secs(61)).await;
    let dispatch = |event: serde_json::Value| {
        c.starter
            .dispatch(LambdaEvent::new(event, lambda_runtime::Context::default()))
    };
    let scheduled = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let answer = dispatch(scheduled).await.unwrap();
    assert_eq!(
        (answer["reclaimed"].clone(), answer["extended"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(c.holders(), ["m-1"]);
    // A foreign event, or a malformed status change: logged, nothing else.
    assert_eq!(
        dispatch(json!({"source": "aws.s3"})).await.unwrap(),
        serde_json::Value::Null
    );
    let mut malformed = status_change(ARN, "m-1", "SUCCEEDED", 0);
    malformed["detail"]["name"] = serde_json::Value::Null;
    assert_eq!(dispatch(malformed).await.unwrap(), serde_json::Value::Null);
    assert_eq!(c.holders(), ["m-1"]);
    // Records that are no SQS batch: the one handler error (README, "How it behaves").
    assert!(dispatch(json!({"Records": "not a list"})).await.is_err());
    // An SQS batch through the dispatcher is the handler's.
    let batch_answer = dispatch(serde_json::to_value(batch(1)).unwrap()).await.unwrap();
    assert_eq!(batch_answer["batchItemFailures"], json!([]), "m-0 is a duplicate");
    let tombstones = c
        .store
        .running_items(KEY)
        .into_values()
        .filter(|i| matches!(i, Item::Holder(h) if h.state == HolderState::Released))
        .count();
    assert_eq!(tombstones, 1);
}

#[tokio::test(start_paused = true)]
async fn a_table_failure_while_releasing_is_an_error_so_the_event_is_retried() {
    let c = setup(capped(2, &[]));
    c.starter.process(batch(1), deadline_in(60_000)).await.unwrap();
    c.store.set_failure(Some("unreachable"));
    let event = status_change(ARN, "m-0", "SUCCEEDED", 0);
    let result = c
        .starter
        .dispatch(LambdaEvent::new(event, lambda_runtime::Context::default()))
        .await;
    assert!(result.is_err());
    c.store.set_failure(None);
    assert_eq!(c.end("m-0").await["outcome"], "Freed", "the retry frees it");
}

#[tokio::test(start_paused = true)]
async fn without_the_cap_nothing_changes() {
    let sfn = FakeSfn::ok();
    let store = Arc::new(MemoryStore::new());
    let starter = Starter::new(
        config(&[("COORDINATION_TABLE", "coordination")]),
        sfn,
        Arc::new(FakeQueue::default()),
    )
    .with_cap(store.clone(), Arc::new(FakeDescriber::default()), store.clone());
    assert!(starter.running().is_none());
    let outcome = starter.process(batch(5), deadline_in(60_000)).await.unwrap();
    assert_eq!((outcome.report.started, outcome.report.running), (5, None));
    assert!(store.running_items(KEY).is_empty());
}
