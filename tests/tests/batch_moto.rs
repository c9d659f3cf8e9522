//! Batch executions (`MESSAGES_PER_EXECUTION` > 1) against moto's DynamoDB and Step Functions,
//! through the real SDK adapters: a 1,000-message drain in batches, then a redelivery that mixes
//! started and new messages; a claim whose execution never started (as after a crash between
//! claim and start) and its redelivery; Express, at-least-once without claims. Messages come
//! from the in-memory SQS (`SimQueue`) through the local event source mapping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use local_stack::esm::event::sqs_event;
use local_stack::moto::{
    create_coordination_table, create_state_machine, executions, free_port, sdk_config_for, Moto, MotoOptions, REGION,
};
use local_stack::sim::{drive, Mapping, SimQueue, DEFAULT_BATCHING_WINDOW};
use serde_json::{json, Value};
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::aws::SfnStarter;
use sfn_pacer::start::claim::{claim_pk, ClaimRequest, ClaimStore, ClaimWrite};
use sfn_pacer::{Config, Starter};

const TABLE: &str = "sfn-pacer-coordination";
/// Generous: the tests of this file run at once, each with a moto that serves one request at
/// a time. (A call that times out and is retried is still exactly once: the retried claim finds
/// its own claims. The counts below then say "found" where they would say "written".)
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn config(state_machine_arn: &str, pairs: &[(&str, &str)]) -> Config {
    let mut all: Vec<(&str, &str)> = vec![
        ("STATE_MACHINE_ARN", state_machine_arn),
        ("STARTS_PER_SECOND", "300"),
        ("STARTS_BURST", "1300"),
        ("MAX_ATTEMPTS", "3"),
        ("CALL_TIMEOUT_MS", "10000"),
        ("DEADLINE_MARGIN_MS", "15000"),
    ];
    all.extend_from_slice(pairs);
    Config::from_lookup(|k| all.iter().rev().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
}

/// Batch mode on Standard: the shared budget and the claims in `TABLE`.
fn standard(state_machine_arn: &str) -> Config {
    config(
        state_machine_arn,
        &[("MESSAGES_PER_EXECUTION", "10"), ("COORDINATION_TABLE", TABLE)],
    )
}

struct Local {
    _moto: Moto,
    aws: aws_config::SdkConfig,
    store: Arc<DynamoStore>,
    state_machine_arn: String,
}

async fn local(state_machine: &str) -> Local {
    // One request at a time: moto's DynamoDB transactions are not thread-safe (two at once can
    // fail with "dictionary changed size during iteration", an HTTP 500).
    let options = MotoOptions {
        single_threaded: true,
        ..MotoOptions::default()
    };
    let moto = Moto::start_with(&options).await.unwrap();
    let aws = moto.sdk_config().await;
    create_coordination_table(&aws, TABLE).await.unwrap();
    let sfn = aws_sdk_sfn::Client::new(&aws);
    let state_machine_arn = create_state_machine(&sfn, state_machine).await.unwrap();
    let store = Arc::new(DynamoStore::new(&aws, TABLE, CALL_TIMEOUT));
    Local {
        _moto: moto,
        aws,
        store,
        state_machine_arn,
    }
}

impl Local {
    fn starter(&self, config: Config, sfn: &aws_config::SdkConfig, queue: &Arc<SimQueue>) -> Arc<Starter> {
        let client = Arc::new(SfnStarter::new(sfn, CALL_TIMEOUT));
        let starter = Starter::coordinated(config, client, queue.clone(), self.store.clone());
        Arc::new(starter.with_claims(self.store.clone()))
    }

    /// Message id → the executions whose `items` carry it, and every item by message id.
    async fn carried(&self) -> (BTreeMap<String, Vec<String>>, HashMap<String, Value>) {
        let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut items = HashMap::new();
        for (name, input) in executions(&self.aws, &self.state_machine_arn).await.unwrap() {
            let input: Value = serde_json::from_str(&input).unwrap();
            for item in input["items"].as_array().expect("an items list") {
                let id = item["messageId"].as_str().unwrap().to_string();
                by_id.entry(id.clone()).or_default().push(name.clone());
                items.insert(id, item.clone());
            }
        }
        (by_id, items)
    }
}

/// Processing deadlines: far, so the generous call timeouts fit.
fn deadline_in(seconds: u64) -> u64 {
    sfn_pacer::handler::now_epoch_ms() + seconds * 1000
}

/// A record as SQS delivers a message again: the same id and body.
fn redelivered(id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.to_string());
    m.receipt_handle = Some(format!("again-{id}"));
    m.body = Some(body.to_string());
    m.attributes.insert("ApproximateReceiveCount".into(), "2".into());
    m
}

fn received(queue: &SimQueue, n: usize, tag: &str) -> Vec<SqsMessage> {
    for i in 0..n {
        queue.send(json!({ tag: i }).to_string());
    }
    let messages = queue.receive(n);
    assert_eq!(messages.len(), n);
    messages
}

fn event(messages: &[SqsMessage], queue: &SimQueue) -> SqsEvent {
    sqs_event(messages, queue.arn(), REGION)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_in_batches_then_a_mixed_redelivery_starts_every_message_in_exactly_one_execution() {
    let local = local("batches").await;
    let queue = SimQueue::new("work", 5, Duration::from_secs(30));
    for i in 0..1000 {
        queue.send(json!({ "i": i }).to_string());
    }
    let starter = local.starter(standard(&local.state_machine_arn), &local.aws, &queue);
    let mapping = Mapping {
        batch_size: 100,
        batching_window: DEFAULT_BATCHING_WINDOW,
        function_timeout: Duration::from_secs(60),
        short_deadline: None,
        max_run: Duration::from_secs(120),
        idle_poll: Duration::from_millis(10),
    };
    let run = drive(queue.clone(), vec![starter.clone()], mapping).await;
    assert!(run.drained, "{run:?}");
    let f = &run.function;
    assert_eq!(
        (f.started, f.executions, f.claims_written, f.failed),
        (1000, 100, 1000, 0),
        "{f:?}"
    );
    let (carried, items) = local.carried().await;
    assert_eq!(carried.len(), 1000);
    assert!(carried.values().all(|names| names.len() == 1));

    // A redelivery of 50 started messages (taken across many executions) with 50 new ones.
    let mut batch: Vec<SqsMessage> = items
        .iter()
        .take(50)
        .map(|(id, item)| redelivered(id, &item["body"].to_string()))
        .collect();
    let fresh = received(&queue, 50, "new");
    batch.extend(fresh.iter().cloned());
    let outcome = starter.process(event(&batch, &queue), deadline_in(60)).await.unwrap();
    assert!(outcome.response.batch_item_failures.is_empty(), "{:?}", outcome.report);
    let r = &outcome.report;
    assert_eq!((r.claims_found, r.claims_written), (50, 50), "{r:?}");
    let (carried, _) = local.carried().await;
    assert_eq!(carried.len(), 1050);
    let twice: Vec<_> = carried.iter().filter(|(_, names)| names.len() != 1).collect();
    assert!(twice.is_empty(), "messages in more than one execution: {twice:?}");
    let executions = executions(&local.aws, &local.state_machine_arn).await.unwrap();
    assert_eq!(executions.len(), 105, "100, and 5 for the new messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_start_never_happened_starts_its_recorded_execution_once() {
    let local = local("crash").await;
    let queue = SimQueue::new("work", 5, Duration::from_secs(30));
    let config = standard(&local.state_machine_arn);
    // Received up front: the first delivery's failures become visible again, and a later
    // receive could return one of them instead of the new message.
    let mut first = received(&queue, 5, "c");
    let later = first.pop().unwrap();
    // The first delivery claims, then cannot reach Step Functions at all: nothing starts, as
    // when the function dies between its claim transaction and StartExecution.
    let nowhere = sdk_config_for(&format!("http://127.0.0.1:{}", free_port().unwrap())).await;
    let cut_off = local.starter(config.clone(), &nowhere, &queue);
    let outcome = cut_off.process(event(&first, &queue), deadline_in(60)).await.unwrap();
    assert_eq!(outcome.response.batch_item_failures.len(), 4);
    assert_eq!(outcome.report.claims_written, 4);
    assert!(executions(&local.aws, &local.state_machine_arn)
        .await
        .unwrap()
        .is_empty());

    // The redelivery holds two of them and a new message.
    let starter = local.starter(config, &local.aws, &queue);
    let mut batch = vec![first[1].clone(), first[3].clone()];
    batch.push(later);
    let outcome = starter.process(event(&batch, &queue), deadline_in(60)).await.unwrap();
    assert!(outcome.response.batch_item_failures.is_empty(), "{:?}", outcome.report);
    assert_eq!(outcome.report.claims_found, 2, "{:?}", outcome.report);
    let (carried, _) = local.carried().await;
    assert_eq!(
        carried.len(),
        5,
        "all four recorded members, and the new one: {carried:#?} {:?}",
        outcome.report
    );
    assert!(carried.values().all(|names| names.len() == 1), "{carried:?}");
    let recorded = &carried[first[0].message_id.as_deref().unwrap()][0];
    assert!(recorded.starts_with("batch-4-"), "{recorded}");

    // The other two arrive later: their execution exists, nothing new starts.
    let rest = vec![first[0].clone(), first[2].clone()];
    let outcome = starter.process(event(&rest, &queue), deadline_in(60)).await.unwrap();
    assert!(outcome.response.batch_item_failures.is_empty(), "{:?}", outcome.report);
    let all = executions(&local.aws, &local.state_machine_arn).await.unwrap();
    assert_eq!(all.len(), 2, "{all:#?} {:?}", outcome.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_batches_are_at_least_once_without_a_table() {
    let local = local("express").await;
    let queue = SimQueue::new("work", 5, Duration::from_secs(30));
    let config = config(
        &local.state_machine_arn,
        &[("MESSAGES_PER_EXECUTION", "10"), ("WORKFLOW_TYPE", "express")],
    );
    let client = Arc::new(SfnStarter::new(&local.aws, CALL_TIMEOUT));
    let starter = Starter::new(config, client, queue.clone());
    let first = received(&queue, 10, "x");
    let outcome = starter.process(event(&first, &queue), deadline_in(60)).await.unwrap();
    assert_eq!((outcome.report.started, outcome.report.executions), (10, 1));
    let mut again = first[..5].to_vec();
    again.extend(received(&queue, 5, "y"));
    let outcome = starter.process(event(&again, &queue), deadline_in(60)).await.unwrap();
    assert_eq!(outcome.report.claims_written + outcome.report.claims_found, 0);
    let (carried, _) = local.carried().await;
    let twice = carried.values().filter(|names| names.len() == 2).count();
    assert_eq!(
        twice, 5,
        "a redelivered message starts again on Express (at-least-once)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamodb_adapter_claims_all_or_nothing_and_reads_back() {
    let local = local("adapter").await;
    let store = local.store.as_ref();
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    fn request<'a>(execution: &'a str, keys: &'a [String]) -> ClaimRequest<'a> {
        ClaimRequest {
            scope: "orders",
            execution,
            input: r#"{"items":[]}"#,
            keys,
            expires_at_epoch_s: 4_000_000_000,
        }
    }
    let (first, overlapping) = (keys(&["a", "b"]), keys(&["b", "c"]));
    assert_eq!(store.claim(&request("e1", &first)).await.unwrap(), ClaimWrite::Written);
    assert_eq!(
        store.claim(&request("e2", &overlapping)).await.unwrap(),
        ClaimWrite::Refused
    );
    let claimed = store.claimed("orders", &keys(&["a", "b", "c"])).await.unwrap();
    assert_eq!(
        claimed,
        HashMap::from([("a".into(), "e1".into()), ("b".into(), "e1".into())])
    );
    assert_eq!(
        store.recorded("orders", "e1").await.unwrap().as_deref(),
        Some(r#"{"items":[]}"#)
    );
    assert_eq!(
        store.recorded("orders", "e2").await.unwrap(),
        None,
        "a refusal writes nothing"
    );
    let dynamodb = aws_sdk_dynamodb::Client::new(&local.aws);
    let item = |key: &'static str| {
        let request = dynamodb.get_item().table_name(TABLE).key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(claim_pk("orders", key)),
        );
        async move { request.send().await.unwrap().item }
    };
    let a = item("a").await.unwrap();
    assert_eq!(a["kind"].as_s().unwrap(), "claim");
    assert_eq!(
        a["expires_at"].as_n().unwrap(),
        "4000000000",
        "the table's TTL attribute"
    );
    assert!(item("c").await.is_none(), "all or nothing");
}
