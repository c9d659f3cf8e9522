//! The cap on running executions against moto (DynamoDB, Step Functions, SQS), through the real
//! SDK adapters and the function's wiring (`sfn_pacer::aws::starter`): the adapter's writes mirror
//! the model's; two deployments share one cap; a release event; a release by expiry with
//! DescribeExecution; a wait of ten visibility timeouts that does not reach the DLQ; the Express
//! sample's own release, its requests sent to moto as Step Functions would build them.
//!
//! moto serves one request at a time here (its DynamoDB transactions are not thread-safe), so
//! nothing long-polls. moto's executions run until the local stack ends them (StopExecution,
//! [`local_stack::events`]), which also builds the status change events EventBridge would send.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sfn::types::ExecutionStatus;
use local_stack::esm::event::sqs_event;
use local_stack::esm::gather::GatherConfig;
use local_stack::esm::in_process::InProcess;
use local_stack::esm::runner::{Queue as _, SHORT_POLL_PAUSE};
use local_stack::esm::sqs::SqsQueue as EsmQueue;
use local_stack::esm::{run, EsmConfig};
use local_stack::events;
use local_stack::moto::{list_executions_in, provision, Moto, Stack, REGION};
use serde_json::{json, Value};
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::start::memory::MemoryStore;
use sfn_pacer::start::running::{
    execution_arn, seed, HolderState, LineShape, RunningStore, Write, Written, TOMBSTONE_TTL,
};
use sfn_pacer::{Config, Starter};

const TABLE: &str = "sfn-pacer-coordination";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

struct Local {
    moto: Moto,
    aws: aws_config::SdkConfig,
    sqs: aws_sdk_sqs::Client,
    sfn: aws_sdk_sfn::Client,
    store: DynamoStore,
}

async fn local() -> Local {
    let (moto, aws) = Moto::with_coordination_table(TABLE).await.unwrap();
    Local {
        sqs: aws_sdk_sqs::Client::new(&aws),
        sfn: aws_sdk_sfn::Client::new(&aws),
        store: DynamoStore::new(&aws, TABLE, CALL_TIMEOUT),
        aws,
        moto,
    }
}

fn config(stack: &Stack, pairs: &[(&str, &str)]) -> Config {
    let mut all: Vec<(&str, &str)> = vec![
        ("STATE_MACHINE_ARN", &stack.state_machine_arn),
        ("DLQ_URL", &stack.dlq_url),
        ("COORDINATION_TABLE", TABLE),
        ("STARTS_PER_SECOND", "50"),
        ("STARTS_BURST", "50"),
        ("CALL_TIMEOUT_MS", "10000"),
        ("DEADLINE_MARGIN_MS", "15000"),
    ];
    all.extend_from_slice(pairs);
    Config::from_lookup(|k| all.iter().rev().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
}

impl Local {
    async fn starter(&self, config: Config) -> Starter {
        sfn_pacer::aws::starter(config, &self.aws).await.unwrap()
    }

    /// Sends `n` messages to the stack's queue and receives them as one event.
    async fn batch(&self, stack: &Stack, n: usize) -> SqsEvent {
        for i in 0..n {
            let body = json!({ "n": i }).to_string();
            self.sqs
                .send_message()
                .queue_url(&stack.queue_url)
                .message_body(body)
                .send()
                .await
                .unwrap();
        }
        let queue = EsmQueue::new(self.sqs.clone(), stack.queue_url.clone());
        let received = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(received.len(), n);
        sqs_event(&received, &stack.queue_arn, REGION)
    }

    async fn running(&self, stack: &Stack) -> Vec<String> {
        let listed = list_executions_in(&self.sfn, &stack.state_machine_arn, Some(ExecutionStatus::Running))
            .await
            .unwrap();
        listed.into_iter().map(|e| e.arn).collect()
    }

    async fn held(&self, key: &str) -> u64 {
        self.store.view(key).await.unwrap().map_or(0, |v| v.held())
    }
}

fn deadline() -> u64 {
    sfn_pacer::handler::now_epoch_ms() + 60_000
}

async fn dispatch(starter: &Starter, event: Value) -> Value {
    let context = lambda_runtime::Context::default();
    starter
        .dispatch(lambda_runtime::LambdaEvent::new(event, context))
        .await
        .unwrap()
}

/// The same records delivered again (their next receive).
fn redelivered(mut event: SqsEvent) -> SqsEvent {
    for record in &mut event.records {
        record.attributes.insert("ApproximateReceiveCount".into(), "2".into());
    }
    event
}

/// The adapter's expressions against moto mirror `Write::apply`, the one definition the
/// in-memory table runs: the same writes give the same answers and leave the same items.
#[tokio::test]
async fn the_dynamodb_adapter_applies_every_write_as_the_model_does() {
    let local = local().await;
    let model = MemoryStore::new();
    let key = "conformance";
    let t = 1_800_000_000_000u64;
    let holder = |name: &str, attempt: u32| sfn_pacer::start::running::Holder {
        scope: "orders".into(),
        name: name.into(),
        shard: 0,
        state: HolderState::Held,
        attempt,
        execution_arn: execution_arn("arn:aws:states:us-east-1:123456789012:stateMachine:orders", name),
        taken_at_ms: t,
        check_at_s: t / 1000 + 60,
        express: false,
        released_at_ms: None,
    };
    let take = |name: &str, attempt: u32, above_cap: bool| Write::Take {
        holder: holder(name, attempt),
        above_cap,
    };
    let release = |name: &str, attempt: u32| Write::Release {
        scope: "orders".into(),
        name: name.into(),
        shard: 0,
        attempt,
        busy_ms: 5_000,
        released_at_ms: t + 5_000,
    };
    let give_back = |name: &str| Write::GiveBack {
        scope: "orders".into(),
        name: name.into(),
        shard: 0,
        taken_at_ms: t,
    };
    let extend = |check_at_s: u64| Write::Extend {
        scope: "orders".into(),
        name: "a".into(),
        check_at_s,
        next_check_at_s: t / 1000 + 600,
        attempt: 1,
    };
    let rebalance = |version: u64| Write::Rebalance {
        version,
        held: vec![1, 0, 0],
        caps: vec![14, 13, 13],
    };
    let steps: Vec<(Write, bool)> = vec![
        (seed(2), true),
        (seed(2), false),
        (take("a", 0, false), true),
        (take("a", 0, false), false),
        (take("b", 0, false), true),
        (take("c", 0, false), false),
        (give_back("b"), true),
        (give_back("b"), false),
        (release("a", 0), true),
        (release("a", 0), false),
        (take("a", 0, false), false),
        (take("a", 1, true), true),
        (extend(t / 1000 + 60), true),
        (extend(t / 1000 + 60), false),
        (
            Write::SetCap {
                version: 1,
                cap: 40,
                shards: 3,
            },
            true,
        ),
        (rebalance(2), true),
        (rebalance(2), false),
        (
            Write::Line(LineShape::FromNow {
                now_ms: t,
                tat_ms: t + 3_000,
            }),
            true,
        ),
        (
            Write::Line(LineShape::FromNow {
                now_ms: t + 1,
                tat_ms: t + 9_000,
            }),
            false,
        ),
        (
            Write::Line(LineShape::Extend {
                now_ms: t + 1,
                delta_ms: 2_000,
            }),
            true,
        ),
    ];
    for (i, (write, applies)) in steps.iter().enumerate() {
        let from_dynamo = local.store.write(key, write).await.unwrap();
        let from_model = model.write(key, write).await.unwrap();
        assert_eq!(from_dynamo, from_model, "step {i}: {write:?}");
        assert_eq!(
            matches!(from_model, Written::Applied(_)),
            *applies,
            "step {i}: {from_model:?}"
        );
    }
    assert_eq!(local.store.view(key).await.unwrap(), model.view(key).await.unwrap());
    let a = local.store.holder(key, "orders", "a").await.unwrap().unwrap();
    assert_eq!(Some(&a), model.holder(key, "orders", "a").await.unwrap().as_ref());
    assert_eq!((a.attempt, a.check_at_s), (1, t / 1000 + 600));
    assert_eq!(
        local.store.holder(key, "orders", "b").await.unwrap(),
        None,
        "given back"
    );
    // The sparse index holds the held holder, due once its check time has passed.
    assert!(local.store.due(key, t / 1000 + 599, 10).await.unwrap().is_empty());
    let due = local.store.due(key, t / 1000 + 600, 10).await.unwrap();
    assert_eq!(due, model.due(key, t / 1000 + 600, 10).await.unwrap());
    assert_eq!(due.len(), 1);
    // A late event of the first run frees nothing; the redriven run's release leaves a tombstone
    // with the table's TTL attribute, 14 days on.
    assert!(matches!(
        local.store.write(key, &release("a", 0)).await.unwrap(),
        Written::Refused(_)
    ));
    assert_eq!(
        local.store.write(key, &release("a", 1)).await.unwrap(),
        Written::Applied(None)
    );
    let dynamodb = aws_sdk_dynamodb::Client::new(&local.aws);
    let tombstone = dynamodb
        .get_item()
        .table_name(TABLE)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(sfn_pacer::start::running::holder_pk(key, "orders", "a")),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let expires_at: u64 = tombstone["expires_at"].as_n().unwrap().parse().unwrap();
    assert_eq!(expires_at, (t + 5_000) / 1000 + TOMBSTONE_TTL.as_secs());
    assert!(!tombstone.contains_key("due"), "out of the index");
}

#[tokio::test]
async fn two_deployments_share_one_cap() {
    let local = local().await;
    let a = provision(&local.aws, "orders-a", 5, 30).await.unwrap();
    let b = provision(&local.aws, "orders-b", 5, 30).await.unwrap();
    let shared = [("MAX_RUNNING_EXECUTIONS", "3"), ("RUNNING_KEY", "database")];
    let starter_a = local.starter(config(&a, &shared)).await;
    let starter_b = local.starter(config(&b, &shared)).await;
    let first_a = starter_a.process(local.batch(&a, 4).await, deadline()).await.unwrap();
    let batch_b = local.batch(&b, 2).await;
    let first_b = starter_b.process(batch_b.clone(), deadline()).await.unwrap();
    assert_eq!(first_a.report.started + first_b.report.started, 3);
    assert_eq!((first_a.report.started, first_b.report.waiting_for_slot), (3, 2));
    let running_a = local.running(&a).await;
    assert_eq!((running_a.len(), local.running(&b).await.len()), (3, 0));
    assert_eq!(local.held("database").await, 3);
    // One of a's executions ends: any deployment's function releases its slot.
    let event = events::end_execution(&local.sfn, &running_a[0]).await.unwrap();
    assert_eq!(dispatch(&starter_b, event).await["outcome"], "Freed");
    // b's waiting messages come back: one takes the freed slot.
    let again = starter_b.process(redelivered(batch_b), deadline()).await.unwrap();
    assert_eq!((again.report.started, again.report.waiting_for_slot), (1, 1));
    assert_eq!(local.running(&a).await.len() + local.running(&b).await.len(), 3);
    assert_eq!(local.held("database").await, 3);
}

#[tokio::test]
async fn a_release_event_and_a_release_by_expiry_with_describe_execution() {
    let local = local().await;
    let stack = provision(&local.aws, "orders", 5, 30).await.unwrap();
    let starter = local
        .starter(config(
            &stack,
            &[("MAX_RUNNING_EXECUTIONS", "3"), ("RUNNING_EXPIRY_SECONDS", "1")],
        ))
        .await;
    let key = "orders";
    let outcome = starter.process(local.batch(&stack, 3).await, deadline()).await.unwrap();
    assert_eq!(outcome.report.started, 3);
    let running = local.running(&stack).await;
    assert_eq!(running.len(), 3);
    // The first ends and its event arrives; the second ends and its event is lost.
    let delivered = events::end_execution(&local.sfn, &running[0]).await.unwrap();
    assert_eq!(dispatch(&starter, delivered).await["outcome"], "Freed");
    let lost = events::end_execution(&local.sfn, &running[1]).await.unwrap();
    assert_eq!(local.held(key).await, 2);
    // After the expiry, the schedule's sweep asks DescribeExecution: the ended one is reclaimed,
    // the running one's check moves on.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let sweep = dispatch(&starter, events::scheduled()).await;
    assert_eq!(
        (sweep["reclaimed"].clone(), sweep["extended"].clone()),
        (json!(1), json!(1)),
        "{sweep}"
    );
    assert_eq!(local.held(key).await, 1);
    let now_s = sfn_pacer::handler::now_epoch_ms() / 1000;
    let name = running[2].rsplit(':').next().unwrap();
    let third = local.store.holder(key, "orders", name).await.unwrap().unwrap();
    assert!(
        third.state == HolderState::Held && third.check_at_s > now_s,
        "{third:?}"
    );
    // The lost event, late: nothing more is freed.
    assert_eq!(dispatch(&starter, lost).await["outcome"], "Duplicate");
    assert_eq!(local.held(key).await, 1);
}

/// Executions last 20 s, ten times the queue's 2 s visibility timeout, with `maxReceiveCount` 5;
/// a cap of 2 makes half the messages wait through at least one execution. None reaches the DLQ:
/// each waits in line (a receive when it is due) and, before its last receive, would be re-sent.
#[tokio::test]
async fn a_long_wait_does_not_reach_the_dlq() {
    let totals = long_wait(5).await;
    assert!(totals.waiting_for_slot >= 2, "{totals:?}");
}

/// The same with `maxReceiveCount` 2: every wait is a message's last receive, so each waiting
/// message is re-sent (SendMessageBatch with a delay, its identity kept) and still starts once,
/// under its first id.
#[tokio::test]
async fn waiting_messages_are_re_sent_before_their_last_receive() {
    let totals = long_wait(2).await;
    assert!(totals.resent >= 2, "{totals:?}");
}

/// Four messages, a cap of 2, executions of 20 s, a queue with a 2 s visibility timeout and
/// `max_receive_count`: nothing in the DLQ, each message started once under its own id, never
/// more than 2 running (by the executions' own times), the last started 20 s after the first.
async fn long_wait(max_receive_count: u32) -> sfn_pacer::metrics::Report {
    const DURATION: Duration = Duration::from_secs(20);
    let local = local().await;
    let stack = provision(&local.aws, "orders", max_receive_count, 2).await.unwrap();
    let receives = max_receive_count.to_string();
    let config = config(
        &stack,
        &[
            ("MAX_RUNNING_EXECUTIONS", "2"),
            ("RUNNING_EXPIRY_SECONDS", "20"),
            ("MAX_RECEIVE_COUNT", &receives),
            ("CALL_TIMEOUT_MS", "5000"),
            ("DEADLINE_MARGIN_MS", "6000"),
        ],
    );
    let starter = Arc::new(local.starter(config).await);
    let mut sent = Vec::new();
    for i in 0..4 {
        let id = local
            .sqs
            .send_message()
            .queue_url(&stack.queue_url)
            .message_body(json!({ "n": i }).to_string())
            .send()
            .await
            .unwrap()
            .message_id
            .unwrap();
        sent.push(id);
    }
    // EventBridge, locally: executions end after DURATION and their events reach the function.
    let ender = {
        let (sfn, starter, arn) = (local.sfn.clone(), starter.clone(), stack.state_machine_arn.clone());
        tokio::spawn(async move {
            let mut ended = 0;
            while ended < 4 {
                for event in events::end_executions_older_than(&sfn, &arn, DURATION).await.unwrap() {
                    assert_eq!(dispatch(&starter, event).await["outcome"], "Freed");
                    ended += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mapping = EsmConfig {
        gather: GatherConfig::new(10, Duration::ZERO, 0),
        max_concurrency: 1,
        function_timeout: Duration::from_secs(30),
        queue_arn: stack.queue_arn.clone(),
        region: REGION.into(),
        until_empty: true,
        empty_polls: 2,
        poll_interval: Duration::from_millis(500),
        empty_receive_pause: SHORT_POLL_PAUSE,
        max_run: Some(Duration::from_secs(150)),
        progress_interval: None,
    };
    let invoker = Arc::new(InProcess::new(vec![starter.clone()], mapping.function_timeout, None));
    let queue = Arc::new(EsmQueue::new(local.sqs.clone(), stack.queue_url.clone()));
    let summary = run(queue, invoker.clone(), mapping, std::future::pending()).await;
    tokio::time::timeout(Duration::from_secs(60), ender)
        .await
        .unwrap()
        .unwrap();
    let dlq = local
        .sqs
        .receive_message()
        .queue_url(&stack.dlq_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert!(dlq.messages.unwrap_or_default().is_empty(), "{summary:?}");
    let executions = local_stack::moto::list_executions(&local.sfn, &stack.state_machine_arn)
        .await
        .unwrap();
    let mut names: Vec<String> = executions.iter().map(|e| e.name.clone()).collect();
    names.sort();
    sent.sort();
    assert_eq!(names, sent, "{summary:?}");
    let times: Vec<(f64, f64)> = executions
        .iter()
        .map(|e| (e.started_at, e.stopped_at.unwrap_or(f64::MAX)))
        .collect();
    let peak = local_stack::executions::peak_running(&times);
    assert!(peak <= 2, "{peak} running at once: {times:?}");
    let starts: Vec<f64> = times.iter().map(|(s, _)| *s).collect();
    let spread = starts.iter().cloned().fold(f64::MIN, f64::max) - starts.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread >= 20.0, "the last started {spread:.1} s after the first");
    invoker.totals()
}

impl Local {
    /// One DynamoDB request as an integration sends it (JSON 1.0), to moto; its status and body.
    async fn dynamodb(&self, operation: &str, request: &Value) -> (u16, Value) {
        let response = local_stack::moto::http_client()
            .unwrap()
            .post(self.moto.endpoint())
            .header("X-Amz-Target", format!("DynamoDB_20120810.{operation}"))
            .header("Content-Type", "application/x-amz-json-1.0")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(request.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default(),
        )
    }
}

/// The Express sample's exact release (`infra/state-machine-express-release.asl.json`): its
/// states' requests, built as Step Functions builds them (DefinitionSubstitutions, then JSONata),
/// sent to moto's DynamoDB. The slot is freed once, with its held time; the execution's states
/// run again (a duplicate) find the tombstone and release nothing, and its transaction sent again
/// is cancelled: nothing is freed twice. Its expressions are the function's own.
#[tokio::test]
async fn the_express_sample_frees_its_own_slot_once() {
    use sfn_pacer::aws::dynamo::running::{RELEASE_CONDITION, RELEASE_UPDATE, UNCOUNT_CONDITION, UNCOUNT_UPDATE};
    let local = local().await;
    let (key, machine, name) = ("express-cap", "orders-express", "ex-1");
    let now_ms = sfn_pacer::handler::now_epoch_ms();
    let holder = sfn_pacer::start::running::Holder {
        scope: machine.into(),
        name: name.into(),
        shard: 1,
        state: HolderState::Held,
        attempt: 0,
        execution_arn: execution_arn(
            &format!("arn:aws:states:us-east-1:123456789012:stateMachine:{machine}"),
            name,
        ),
        taken_at_ms: now_ms - 1_500,
        check_at_s: now_ms / 1000 + 300,
        express: true,
        released_at_ms: None,
    };
    for write in [
        seed(40),
        Write::Take {
            holder,
            above_cap: false,
        },
    ] {
        assert!(matches!(
            local.store.write(key, &write).await.unwrap(),
            Written::Applied(_)
        ));
    }
    let path = local_stack::paths::workspace_root().join("infra/state-machine-express-release.asl.json");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("${CoordinationTable}", TABLE)
        .replace("${RunningKey}", key)
        .replace("${StateMachineName}", machine);
    let definition: Value = serde_json::from_str(&text).unwrap();
    let states = &definition["States"];
    let release = &states["ReleaseSlot"]["Arguments"]["TransactItems"];
    for (i, (condition, update)) in [(RELEASE_CONDITION, RELEASE_UPDATE), (UNCOUNT_CONDITION, UNCOUNT_UPDATE)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(release[i]["Update"]["ConditionExpression"], condition);
        assert_eq!(release[i]["Update"]["UpdateExpression"], update);
    }
    let context = json!({"Execution": {"Name": name}});
    let run = |slot: &Value| json!({"states": {"context": context}, "slot": slot});
    let read_slot = || async {
        let request = local_stack::jsonata::evaluate(&states["ReadSlot"]["Arguments"], &run(&Value::Null)).unwrap();
        let (status, read) = local.dynamodb("GetItem", &request).await;
        assert_eq!(status, 200, "{read}");
        read["Item"].clone()
    };
    let held =
        |slot: &Value| local_stack::jsonata::evaluate(&states["Held"]["Choices"][0]["Condition"], &run(slot)).unwrap();
    let slot = read_slot().await;
    assert_eq!(held(&slot), json!(true));
    let transaction = local_stack::jsonata::evaluate(&states["ReleaseSlot"]["Arguments"], &run(&slot)).unwrap();
    let (status, answer) = local.dynamodb("TransactWriteItems", &transaction).await;
    assert_eq!(status, 200, "{answer}");
    let view = local.store.view(key).await.unwrap().unwrap();
    let (freed, busy_ms) = view.freed();
    assert_eq!((view.held(), freed), (0, 1));
    assert!((1_500..60_000).contains(&busy_ms), "held about 1.5 s: {busy_ms} ms");
    let tombstone = local.store.holder(key, machine, name).await.unwrap().unwrap();
    assert_eq!(tombstone.state, HolderState::Released);
    assert!(tombstone.expires_at_s().unwrap() >= now_ms / 1000 + TOMBSTONE_TTL.as_secs());
    // A duplicate run finds the tombstone: Held is false, nothing is written.
    assert_eq!(held(&read_slot().await), json!(false));
    // The same release sent again (a concurrent duplicate) is cancelled: nothing is freed twice.
    let (status, answer) = local.dynamodb("TransactWriteItems", &transaction).await;
    assert_eq!(
        (
            status,
            answer["__type"]
                .as_str()
                .unwrap_or_default()
                .ends_with("TransactionCanceledException")
        ),
        (400, true),
        "{answer}"
    );
    let view = local.store.view(key).await.unwrap().unwrap();
    assert_eq!((view.held(), view.freed().0), (0, 1));
}
