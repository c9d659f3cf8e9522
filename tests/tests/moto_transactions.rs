//! The local stack's moto (`local-stack/src/moto_launcher.py`) backs up only the items a
//! TransactWriteItems touches, where moto deep-copies whole tables: these tests hold it to
//! moto's semantics through the real SDK client. A cancelled transaction leaves every item it
//! touched as it was (a Put undone, an Update undone, a Delete undone), with DynamoDB's
//! cancellation reasons and `ALL_OLD`; a committed one is applied whole; untouched items stay.
//! (That the patch makes transactions O(items touched) is a benchmark's claim, BENCHMARKS.md
//! section 8; here, that it is in force.)

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use local_stack::moto::{create_coordination_table, Moto, MotoOptions};

const TABLE: &str = "transactions";

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

fn key(pk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_string(), s(pk))])
}

fn put_if_absent(pk: &str, value: &str) -> TransactWriteItem {
    let put = Put::builder()
        .table_name(TABLE)
        .item("pk", s(pk))
        .item("v", s(value))
        .condition_expression("attribute_not_exists(pk)")
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .unwrap();
    TransactWriteItem::builder().put(put).build()
}

fn set_value(pk: &str, value: &str) -> TransactWriteItem {
    let update = Update::builder()
        .table_name(TABLE)
        .set_key(Some(key(pk)))
        .update_expression("SET v = :v")
        .expression_attribute_values(":v", s(value))
        .build()
        .unwrap();
    TransactWriteItem::builder().update(update).build()
}

fn delete(pk: &str) -> TransactWriteItem {
    let delete = Delete::builder()
        .table_name(TABLE)
        .set_key(Some(key(pk)))
        .build()
        .unwrap();
    TransactWriteItem::builder().delete(delete).build()
}

/// Every item: pk → v.
async fn items(dynamodb: &aws_sdk_dynamodb::Client) -> Vec<(String, String)> {
    let scan = dynamodb.scan().table_name(TABLE).send().await.unwrap();
    let mut out: Vec<(String, String)> = scan
        .items()
        .iter()
        .map(|item| {
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
            (text("pk"), text("v"))
        })
        .collect();
    out.sort();
    out
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_transaction_leaves_every_item_it_touched_as_it_was() {
    let log = std::env::temp_dir().join(format!("sfn-pacer-moto-transactions-{}.log", std::process::id()));
    let options = MotoOptions {
        single_threaded: true,
        log: Some(log.clone()),
        ..MotoOptions::default()
    };
    let moto = Moto::start_with(&options).await.unwrap();
    let launched = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        launched.contains("TransactWriteItems backs up only the items it touches"),
        "the launcher's patch is not in force with this moto:\n{launched}"
    );
    let aws = moto.sdk_config().await;
    create_coordination_table(&aws, TABLE).await.unwrap();
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    for (pk, v) in [("kept", "1"), ("updated", "1"), ("deleted", "1"), ("claimed", "old")] {
        dynamodb
            .put_item()
            .table_name(TABLE)
            .item("pk", s(pk))
            .item("v", s(v))
            .send()
            .await
            .unwrap();
    }
    let before = items(&dynamodb).await;

    // A new item, an update, a delete, then a Put whose condition fails: all undone.
    let result = dynamodb
        .transact_write_items()
        .transact_items(put_if_absent("new", "1"))
        .transact_items(set_value("updated", "2"))
        .transact_items(delete("deleted"))
        .transact_items(put_if_absent("claimed", "new"))
        .send()
        .await;
    let Err(SdkError::ServiceError(e)) = result else {
        panic!("expected a cancellation, got {result:?}");
    };
    let TransactWriteItemsError::TransactionCanceledException(cancelled) = e.err() else {
        panic!("expected TransactionCanceledException, got {:?}", e.err());
    };
    let codes: Vec<Option<&str>> = cancelled.cancellation_reasons().iter().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [Some("None"), Some("None"), Some("None"), Some("ConditionalCheckFailed")]
    );
    let old = cancelled.cancellation_reasons()[3]
        .item()
        .and_then(|i| i.get("v"))
        .cloned();
    assert_eq!(
        old,
        Some(s("old")),
        "ALL_OLD returns the item that failed the condition"
    );
    assert_eq!(items(&dynamodb).await, before);

    // The same without the failing Put commits whole.
    dynamodb
        .transact_write_items()
        .transact_items(put_if_absent("new", "1"))
        .transact_items(set_value("updated", "2"))
        .transact_items(delete("deleted"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        items(&dynamodb).await,
        pairs(&[("claimed", "old"), ("kept", "1"), ("new", "1"), ("updated", "2")])
    );

    // Two operations on one item: a validation error, and nothing applied.
    let result = dynamodb
        .transact_write_items()
        .transact_items(put_if_absent("another", "1"))
        .transact_items(set_value("kept", "2"))
        .transact_items(delete("kept"))
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(
        items(&dynamodb).await,
        pairs(&[("claimed", "old"), ("kept", "1"), ("new", "1"), ("updated", "2")])
    );
}
