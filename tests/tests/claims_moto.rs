//! The DynamoDB adapter's trimming of a started execution's record, against moto: the record
//! keeps its key, `state` "started" and `expires_at`, and loses its input; the claims stay; a
//! redelivery reads "started". (The flows around it are in batch_moto.rs and the handler's
//! unit tests.)

use std::time::Duration;

use local_stack::moto::Moto;
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::start::claim::{claim_pk, execution_pk, ClaimRequest, ClaimStore, ClaimWrite, Record};

const TABLE: &str = "claims";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_record_is_trimmed_to_started_and_its_claims_stay() {
    let (_moto, aws) = Moto::with_coordination_table(TABLE).await.unwrap();
    let store = DynamoStore::new(&aws, TABLE, Duration::from_secs(10));
    let keys = vec!["a".to_string(), "b".to_string()];
    let input = format!(r#"{{"items":[{{"body":"{}"}}]}}"#, "x".repeat(1024));
    let request = ClaimRequest {
        scope: "orders",
        execution: "e1",
        input: &input,
        keys: &keys,
        expires_at_epoch_s: 4_000_000_000,
    };
    assert_eq!(store.claim(&request).await.unwrap(), ClaimWrite::Written);
    assert_eq!(
        store.record("orders", "e1").await.unwrap(),
        Some(Record::Pending(input.clone()))
    );

    store.confirm("orders", "e1").await.unwrap();
    assert_eq!(store.record("orders", "e1").await.unwrap(), Some(Record::Started));
    assert_eq!(store.recorded("orders", "e1").await.unwrap(), None, "no input left");
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    let item = |pk: String| {
        let request = dynamodb
            .get_item()
            .table_name(TABLE)
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk));
        async move { request.send().await.unwrap().item.unwrap_or_default() }
    };
    let record = item(execution_pk("orders", "e1")).await;
    let mut names: Vec<&str> = record.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["expires_at", "kind", "pk", "state"]);
    assert_eq!(record["state"].as_s().unwrap(), "started");
    assert_eq!(record["expires_at"].as_n().unwrap(), "4000000000");
    let claim = item(claim_pk("orders", "a")).await;
    assert_eq!(claim["execution"].as_s().unwrap(), "e1", "the claims stay");

    // Confirming again, or a record that is not there: nothing to do, no error.
    store.confirm("orders", "e1").await.unwrap();
    store.confirm("orders", "never-claimed").await.unwrap();
    assert_eq!(store.record("orders", "never-claimed").await.unwrap(), None);
    assert!(item(execution_pk("orders", "never-claimed")).await.is_empty());
}
