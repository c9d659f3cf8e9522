//! Batch mode (`MESSAGES_PER_EXECUTION` > 1) on the handler's fakes and the in-memory
//! coordination table (conditional writes, all-or-nothing transactions, DynamoDB's limits).

use super::*;
use crate::start::memory::MemoryStore;

fn batching(n: &str, more: &[(&str, &str)]) -> Config {
    let mut pairs = vec![("MESSAGES_PER_EXECUTION", n), ("COORDINATION_TABLE", "coordination")];
    pairs.extend_from_slice(more);
    config(&pairs)
}

fn starter(config: Config, sfn: Arc<FakeSfn>, store: &Arc<MemoryStore>) -> Starter {
    Starter::new(config, sfn, Arc::new(FakeQueue::default())).with_claims(store.clone())
}

fn records(ids: impl IntoIterator<Item = usize>) -> SqsEvent {
    event(
        ids.into_iter()
            .map(|i| record(&format!("m-{i}"), &format!("{{\"n\":{i}}}")))
            .collect(),
    )
}

/// Message id → the names of the executions whose `items` carry it.
fn carried_by(sfn: &FakeSfn) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (name, input) in sfn.executions() {
        let input: serde_json::Value = serde_json::from_str(&input).unwrap();
        for item in input["items"].as_array().unwrap() {
            let id = item["messageId"].as_str().unwrap().to_string();
            out.entry(id).or_default().push(name.clone());
        }
    }
    out
}

fn assert_each_in_exactly_one_execution(sfn: &FakeSfn, ids: impl IntoIterator<Item = usize>) {
    let carried = carried_by(sfn);
    for i in ids {
        let id = format!("m-{i}");
        assert_eq!(carried.get(&id).map(Vec::len), Some(1), "{id}: {:?}", carried.get(&id));
    }
}

#[tokio::test(start_paused = true)]
async fn messages_are_grouped_into_claimed_executions_of_n() {
    let sfn = FakeSfn::ok();
    let store = Arc::new(MemoryStore::new());
    let outcome = starter(batching("10", &[]), sfn.clone(), &store)
        .process(records(0..25), deadline_in(60_000))
        .await
        .unwrap();
    assert!(failures(&outcome).is_empty());
    let r = &outcome.report;
    assert_eq!(
        (r.started, r.executions, r.claims_written, r.claims_found),
        (25, 3, 25, 0)
    );
    assert_eq!(r.messages_per_execution(), 25.0 / 3.0);
    assert_eq!(sfn.calls().len(), 3);
    assert_each_in_exactly_one_execution(&sfn, 0..25);
    assert_eq!(
        store.claim_writes(),
        25 + 3,
        "one claim per message, one record per execution"
    );
    let (_, input) = sfn
        .executions()
        .into_iter()
        .find(|(n, _)| n.starts_with("batch-5-"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&input).unwrap();
    assert_eq!(v["items"][0], json!({"messageId": "m-20", "body": {"n": 20}}));
}

#[tokio::test(start_paused = true)]
async fn a_bad_message_goes_to_the_dlq_alone_and_its_neighbours_start() {
    let sfn = FakeSfn::ok();
    let store = Arc::new(MemoryStore::new());
    let queue = Arc::new(FakeQueue::default());
    let starter = Starter::new(
        batching("10", &[("DLQ_URL", "http://q/dlq")]),
        sfn.clone(),
        queue.clone(),
    )
    .with_claims(store);
    let mut event_records: Vec<_> = (0..9).map(|i| record(&format!("m-{i}"), "{}")).collect();
    event_records.insert(4, record("bad", "not json"));
    let outcome = starter
        .process(event(event_records), deadline_in(60_000))
        .await
        .unwrap();
    assert!(failures(&outcome).is_empty());
    assert_eq!(outcome.dispositions[4], Disposition::DeadLettered);
    assert_eq!((outcome.report.started, outcome.report.executions), (9, 1));
    assert_eq!(dead_letter_codes(&queue), ["BodyNotJson"]);
    assert_each_in_exactly_one_execution(&sfn, 0..9);
}

#[tokio::test(start_paused = true)]
async fn a_redelivery_with_new_neighbours_starts_each_message_once() {
    let sfn = FakeSfn::ok();
    let store = Arc::new(MemoryStore::new());
    let starter = starter(batching("10", &[]), sfn.clone(), &store);
    starter.process(records(0..10), deadline_in(60_000)).await.unwrap();
    let outcome = starter.process(records(5..15), deadline_in(60_000)).await.unwrap();
    assert!(failures(&outcome).is_empty());
    let r = &outcome.report;
    assert_eq!((r.claims_found, r.claims_written), (5, 5));
    assert_eq!(sfn.executions().len(), 2);
    assert_each_in_exactly_one_execution(&sfn, 0..15);
    // The first execution's start was confirmed, its record trimmed: its redelivered members
    // are duplicates, acknowledged without a call; the new ones start.
    let (redelivered, new) = outcome.dispositions.split_at(5);
    assert!(
        redelivered.iter().all(|d| *d == Disposition::Duplicate),
        "{redelivered:?}"
    );
    assert!(new.iter().all(|d| *d == Disposition::Started), "{new:?}");
    assert_eq!((r.duplicates, sfn.calls().len()), (5, 2));
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_start_trims_its_record_to_started() {
    let sfn = FakeSfn::ok();
    let store = Arc::new(MemoryStore::new());
    let config = batching(
        "10",
        &[
            ("QUEUE_RETENTION_SECONDS", "345600"),
            ("DLQ_RETENTION_SECONDS", "1209600"),
        ],
    );
    let ttl = config.claim_ttl(false).as_secs();
    let starter = starter(config, sfn.clone(), &store);
    let before = crate::handler::now_epoch_ms() / 1000;
    starter.process(records(0..10), deadline_in(60_000)).await.unwrap();
    let items = store.claim_items();
    let (records, claims): (Vec<_>, Vec<_>) = items.iter().partition(|(pk, _)| pk.starts_with("execution#"));
    let [(pk, record)] = &records[..] else {
        panic!("{records:?}")
    };
    assert!(record.started && record.input.is_none(), "{record:?}");
    assert!(record.bytes(pk) < 100, "a trimmed record keeps its key and state only");
    assert_eq!(claims.len(), 10, "the claims stay: a redelivery finds them");
    // Claims and record expire when SQS can no longer deliver the message: 4 + 14 days (+1 h).
    for item in items.values() {
        let expires = item.expires_at_epoch_s;
        assert!(
            (before + ttl..=before + ttl + 2).contains(&expires),
            "{expires} vs {}",
            before + ttl
        );
    }
    assert_eq!(ttl, (18 * 24 + 1) * 3600);
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_claim_and_start_starts_the_recorded_execution_on_redelivery() {
    let store = Arc::new(MemoryStore::new());
    // The first delivery claims, then never starts (every call fails: as if it had crashed).
    let down = FakeSfn::new(Duration::from_millis(5), Box::new(|_, _| Some(service("", 503))));
    let first = starter(batching("10", &[("MAX_ATTEMPTS", "1")]), down, &store)
        .process(records(0..4), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(failures(&first).len(), 4, "a failed start reports every member");
    assert_eq!(first.report.claims_written, 4);
    // The redelivery holds only two of them, with a new neighbour.
    let sfn = FakeSfn::ok();
    let outcome = starter(batching("10", &[]), sfn.clone(), &store)
        .process(records([1, 3, 9]), deadline_in(60_000))
        .await
        .unwrap();
    assert!(failures(&outcome).is_empty());
    assert_eq!(sfn.executions().len(), 2, "the recorded one, and one for m-9");
    assert_each_in_exactly_one_execution(&sfn, [0, 1, 2, 3, 9]);
    let recorded = crate::plan::batch::name(&(0..4).map(|i| format!("m-{i}")).collect::<Vec<_>>());
    assert_eq!(carried_by(&sfn)["m-0"], [recorded]);
    // Delivered again later, the other two find their execution: nothing new starts.
    let again = starter(batching("10", &[]), sfn.clone(), &store)
        .process(records([0, 2]), deadline_in(60_000))
        .await
        .unwrap();
    assert!(failures(&again).is_empty());
    assert_eq!(sfn.executions().len(), 2);
    assert_eq!(again.report.claims_found, 2);
}

#[tokio::test(start_paused = true)]
async fn a_table_that_cannot_be_used_reports_every_message_and_starts_nothing() {
    let sfn = FakeSfn::ok();
    let store = Arc::new(MemoryStore::new());
    store.set_failure(Some("ResourceNotFoundException"));
    let outcome = starter(batching("10", &[]), sfn.clone(), &store)
        .process(records(0..12), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(failures(&outcome).len(), 12);
    assert!(sfn.calls().is_empty(), "no start without claims on Standard");
}

#[tokio::test(start_paused = true)]
async fn fifo_executions_carry_one_group_in_order_and_a_failure_reports_the_rest_of_it() {
    let sfn = FakeSfn::new(
        Duration::from_millis(5),
        Box::new(|r, _| r.input.contains("\"a2\"").then(|| service("", 500))),
    );
    let store = Arc::new(MemoryStore::new());
    let fifo = |id: &str, group: &str| {
        let mut r = record(id, "{}");
        r["eventSourceARN"] = json!("arn:aws:sqs:us-east-1:123456789012:work.fifo");
        r["attributes"]["MessageGroupId"] = json!(group);
        r
    };
    let ids = [
        ("a0", "a"),
        ("b0", "b"),
        ("a1", "a"),
        ("b1", "b"),
        ("a2", "a"),
        ("a3", "a"),
        ("b2", "b"),
    ];
    let event_records = ids.iter().map(|(id, g)| fifo(id, g)).collect();
    let outcome = starter(batching("2", &[("MAX_ATTEMPTS", "1")]), sfn.clone(), &store)
        .process(event(event_records), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(
        failures(&outcome),
        ["a2", "a3"],
        "the failed execution's members and the rest"
    );
    let inputs: Vec<String> = sfn.calls().iter().map(|(_, r)| r.input.clone()).collect();
    let ids_of = |input: &str| {
        let v: serde_json::Value = serde_json::from_str(input).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["messageId"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let executions: Vec<Vec<String>> = inputs.iter().map(|i| ids_of(i)).collect();
    for e in &executions {
        assert!(
            e.iter().all(|id| id[..1] == e[0][..1]),
            "one group per execution: {e:?}"
        );
    }
    assert!(executions.contains(&vec!["a0".into(), "a1".into()]));
    assert!(executions.contains(&vec!["b0".into(), "b1".into()]));
    assert!(executions.contains(&vec!["b2".into()]));
}

#[tokio::test(start_paused = true)]
async fn express_batches_without_claims_at_least_once() {
    let sfn = FakeSfn::ok();
    let store = Arc::new(MemoryStore::new());
    let c = config(&[("MESSAGES_PER_EXECUTION", "10"), ("WORKFLOW_TYPE", "express")]);
    let starter = starter(c, sfn.clone(), &store);
    let first = starter.process(records(0..10), deadline_in(60_000)).await.unwrap();
    assert_eq!((first.report.started, first.report.executions), (10, 1));
    starter.process(records(5..15), deadline_in(60_000)).await.unwrap();
    assert_eq!(store.calls(), 0, "no claims on Express");
    assert_eq!(
        carried_by(&sfn)["m-7"].len(),
        2,
        "a redelivered message may start again"
    );
}

#[tokio::test(start_paused = true)]
async fn single_mode_writes_no_claims() {
    let sfn = FakeSfn::ok();
    let store = Arc::new(MemoryStore::new());
    let outcome = starter(config(&[("COORDINATION_TABLE", "coordination")]), sfn.clone(), &store)
        .process(records(0..5), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!((outcome.report.started, outcome.report.executions), (5, 5));
    assert_eq!(store.claim_writes(), 0);
    assert_eq!(
        sfn.executions()["m-3"],
        "{\"n\":3}",
        "the body as is, not an items list"
    );
}
