use std::collections::HashMap;

use super::*;
use crate::memory::{quota, MemoryMetrics, MemoryQuotas};

fn standard(bucket: f64, refill: f64) -> Vec<ServiceQuota> {
    vec![
        quota("L-OTHER", "GetExecutionHistory throttle token bucket size", 250.0),
        quota("L-BUCKET", Quantity::Bucket.quota_name(), bucket),
        quota("L-REFILL", Quantity::Refill.quota_name(), refill),
    ]
}

fn metrics(pairs: &[(&str, f64)]) -> MemoryMetrics {
    MemoryMetrics {
        latest: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<HashMap<_, _>>(),
        failure: None,
    }
}

#[tokio::test]
async fn applied_values_come_first() {
    let quotas = MemoryQuotas {
        applied: standard(2500.0, 500.0),
        defaults: standard(1300.0, 300.0),
        failure: None,
    };
    let quota = read_quota(&quotas, &metrics(&[]), WorkflowType::Standard)
        .await
        .unwrap();
    assert_eq!(quota.bucket.value, 2500.0);
    assert_eq!(quota.refill.value, 500.0);
    assert_eq!(
        quota.bucket.source,
        Source::Applied {
            code: "L-BUCKET".into()
        }
    );
    assert!(quota.notes.is_empty(), "{:?}", quota.notes);
}

#[tokio::test]
async fn defaults_fill_in_what_has_no_applied_value() {
    let quotas = MemoryQuotas {
        // Only the refill has an applied value.
        applied: vec![quota("L-REFILL", Quantity::Refill.quota_name(), 450.0)],
        defaults: standard(1300.0, 300.0),
        failure: None,
    };
    let quota = read_quota(&quotas, &metrics(&[]), WorkflowType::Standard)
        .await
        .unwrap();
    assert_eq!((quota.bucket.value, quota.refill.value), (1300.0, 450.0));
    assert_eq!(quota.bucket.source.tag(), "service-quotas-default");
    assert_eq!(quota.refill.source.tag(), "service-quotas-applied");
    assert_eq!(quota.notes, ["ListServiceQuotas lists no applied bucket size"]);
}

#[tokio::test]
async fn cloudwatch_is_read_where_service_quotas_fails() {
    let quotas = MemoryQuotas {
        failure: Some("AccessDeniedException: not authorized".into()),
        ..MemoryQuotas::default()
    };
    let cw = metrics(&[("ProvisionedBucketSize", 800.0), ("ProvisionedRefillRate", 150.0)]);
    let quota = read_quota(&quotas, &cw, WorkflowType::Standard).await.unwrap();
    assert_eq!((quota.bucket.value, quota.refill.value), (800.0, 150.0));
    assert_eq!(
        quota.refill.source,
        Source::Metric {
            name: "ProvisionedRefillRate"
        }
    );
    assert_eq!(
        quota.notes,
        [
            "ListServiceQuotas: AccessDeniedException: not authorized",
            "ListAWSDefaultServiceQuotas: AccessDeniedException: not authorized"
        ]
    );
}

#[tokio::test]
async fn nothing_found_says_what_each_source_said() {
    let quotas = MemoryQuotas::default();
    let cw = metrics(&[("ProvisionedBucketSize", 800.0)]);
    let err = read_quota(&quotas, &cw, WorkflowType::Standard).await.unwrap_err();
    let message = err.to_string();
    assert_eq!(err.exit_code(), 2);
    assert!(
        message.starts_with("no StartExecution refill rate found for Standard workflows: "),
        "{message}"
    );
    assert!(
        message.contains("ProvisionedRefillRate: no datapoint in the last 3 hours"),
        "{message}"
    );
    assert!(message.ends_with("set the budget with `set` instead"), "{message}");
    assert!(!message.contains('\n'));
}

#[tokio::test]
async fn unusable_values_are_skipped() {
    let quotas = MemoryQuotas {
        applied: standard(0.0, f64::NAN),
        defaults: standard(1300.0, 300.0),
        failure: None,
    };
    let quota = read_quota(&quotas, &metrics(&[]), WorkflowType::Standard)
        .await
        .unwrap();
    assert_eq!((quota.bucket.value, quota.refill.value), (1300.0, 300.0));
    assert_eq!(quota.notes.len(), 2, "{:?}", quota.notes);
}

#[tokio::test]
async fn express_reads_express_names_and_never_the_standard_metrics() {
    let quotas = MemoryQuotas {
        applied: standard(1300.0, 300.0),
        ..MemoryQuotas::default()
    };
    let cw = metrics(&[("ProvisionedBucketSize", 800.0), ("ProvisionedRefillRate", 150.0)]);
    let err = read_quota(&quotas, &cw, WorkflowType::Express).await.unwrap_err();
    assert!(err.to_string().contains("CloudWatch not read for Express"), "{err}");

    let express = MemoryQuotas {
        applied: vec![
            quota(
                "L-EB",
                "StartExecution throttle token bucket size for Express workflows",
                6000.0,
            ),
            quota(
                "L-ER",
                "StartExecution throttle token refill rate per second for Express workflows",
                6000.0,
            ),
        ],
        ..MemoryQuotas::default()
    };
    let quota = read_quota(&express, &cw, WorkflowType::Express).await.unwrap();
    assert_eq!((quota.bucket.value, quota.refill.value), (6000.0, 6000.0));
    assert!(!Quantity::Bucket.matches(
        WorkflowType::Standard,
        "StartExecution throttle token bucket size for Express workflows"
    ));
}
