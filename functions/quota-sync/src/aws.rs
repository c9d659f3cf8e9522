//! The SDK adapters of [`ServiceQuotas`], [`Metrics`] and [`Records`]. Tested against the local
//! stack's fakes of Service Quotas and CloudWatch (`local_stack::fake_quotas`, their real
//! protocols: moto 5.2.5 has neither `ListServiceQuotas` nor CloudWatch's CBOR protocol) and
//! moto's DynamoDB.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::timeout::TimeoutConfig;
use sfn_pacer::aws::dynamo::{budget_pk, store_error};
use sfn_pacer::start::table::StoreError;

use crate::failure::one_line;
use crate::quota::{MetricWindow, Metrics, ServiceQuota, ServiceQuotas, SourceError, API_NAME, METRICS_NAMESPACE};
use crate::sync::{Records, SyncRecord};

/// Pages read of one listing at most (Service Quotas lists ~100 quotas of `states`).
const MAX_PAGES: usize = 50;

fn source_error(e: impl std::error::Error) -> SourceError {
    SourceError(one_line(&DisplayErrorContext(e).to_string()))
}

fn timeouts(call_timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(call_timeout)
        .operation_attempt_timeout(call_timeout)
        .operation_timeout(call_timeout * 3)
        .build()
}

/// Service Quotas through `aws-sdk-servicequotas` (standard retries, bounded calls).
#[derive(Debug, Clone)]
pub struct SdkServiceQuotas {
    client: aws_sdk_servicequotas::Client,
}

impl SdkServiceQuotas {
    /// A client from `sdk_config`, each attempt bounded by `call_timeout`.
    pub fn new(sdk_config: &aws_config::SdkConfig, call_timeout: Duration) -> SdkServiceQuotas {
        let config = aws_sdk_servicequotas::config::Builder::from(sdk_config)
            .timeout_config(timeouts(call_timeout))
            .build();
        SdkServiceQuotas {
            client: aws_sdk_servicequotas::Client::from_conf(config),
        }
    }
}

fn listed(quota: &aws_sdk_servicequotas::types::ServiceQuota) -> Option<ServiceQuota> {
    Some(ServiceQuota {
        code: quota.quota_code()?.to_string(),
        name: quota.quota_name()?.to_string(),
        value: quota.value(),
    })
}

#[async_trait]
impl ServiceQuotas for SdkServiceQuotas {
    async fn list_applied(&self, service_code: &str) -> Result<Vec<ServiceQuota>, SourceError> {
        all_pages(|token| async move {
            let request = self.client.list_service_quotas().service_code(service_code);
            let page = request.set_next_token(token).send().await.map_err(source_error)?;
            Ok((
                page.quotas().iter().filter_map(listed).collect(),
                next(page.next_token()),
            ))
        })
        .await
    }

    async fn get_applied(&self, service_code: &str, quota_code: &str) -> Result<Option<f64>, SourceError> {
        let request = self
            .client
            .get_service_quota()
            .service_code(service_code)
            .quota_code(quota_code);
        match request.send().await {
            Ok(out) => Ok(out.quota().and_then(|q| q.value())),
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_resource_exception() => Ok(None),
            Err(e) => Err(source_error(e)),
        }
    }

    async fn list_defaults(&self, service_code: &str) -> Result<Vec<ServiceQuota>, SourceError> {
        all_pages(|token| async move {
            let request = self.client.list_aws_default_service_quotas().service_code(service_code);
            let page = request.set_next_token(token).send().await.map_err(source_error)?;
            Ok((
                page.quotas().iter().filter_map(listed).collect(),
                next(page.next_token()),
            ))
        })
        .await
    }
}

/// A page's `NextToken`, `None` at the end.
fn next(token: Option<&str>) -> Option<String> {
    token.filter(|t| !t.is_empty()).map(str::to_string)
}

/// Every page of a listing, [`MAX_PAGES`] at most: `page` sends the request with a token and
/// returns its quotas and the next token.
async fn all_pages<F, Fut>(mut page: F) -> Result<Vec<ServiceQuota>, SourceError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<ServiceQuota>, Option<String>), SourceError>>,
{
    let mut out = Vec::new();
    let mut token = None;
    for _ in 0..MAX_PAGES {
        let (quotas, next) = page(token).await?;
        out.extend(quotas);
        token = next;
        if token.is_none() {
            break;
        }
    }
    Ok(out)
}

/// CloudWatch through `aws-sdk-cloudwatch` (standard retries, bounded calls).
#[derive(Debug, Clone)]
pub struct SdkMetrics {
    client: aws_sdk_cloudwatch::Client,
}

impl SdkMetrics {
    /// A client from `sdk_config`, each attempt bounded by `call_timeout`.
    pub fn new(sdk_config: &aws_config::SdkConfig, call_timeout: Duration) -> SdkMetrics {
        let config = aws_sdk_cloudwatch::config::Builder::from(sdk_config)
            .timeout_config(timeouts(call_timeout))
            .build();
        SdkMetrics {
            client: aws_sdk_cloudwatch::Client::from_conf(config),
        }
    }
}

fn query(id: String, metric_name: &str, period_seconds: u32) -> MetricDataQuery {
    let dimension = Dimension::builder().name("APIName").value(API_NAME).build();
    let metric = Metric::builder()
        .namespace(METRICS_NAMESPACE)
        .metric_name(metric_name)
        .dimensions(dimension)
        .build();
    let stat = MetricStat::builder()
        .metric(metric)
        .period(period_seconds as i32)
        .stat("Maximum")
        .build();
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(stat)
        .return_data(true)
        .build()
}

#[async_trait]
impl Metrics for SdkMetrics {
    async fn latest(&self, metric_names: &[&str], window: MetricWindow) -> Result<Vec<Option<f64>>, SourceError> {
        let end = SystemTime::now();
        let start = end - Duration::from_secs(window.lookback_seconds);
        let ids: Vec<String> = (0..metric_names.len()).map(|i| format!("m{i}")).collect();
        let mut request = self
            .client
            .get_metric_data()
            .start_time(start.into())
            .end_time(end.into())
            .scan_by(ScanBy::TimestampDescending);
        for (id, name) in ids.iter().zip(metric_names) {
            request = request.metric_data_queries(query(id.clone(), name, window.period_seconds));
        }
        // Descending: each result's first value is its latest datapoint. Later pages only add
        // older datapoints, so the first page is enough.
        let out = request.send().await.map_err(source_error)?;
        let latest: HashMap<&str, f64> = out
            .metric_data_results()
            .iter()
            .filter_map(|r| Some((r.id()?, *r.values().first()?)))
            .collect();
        Ok(ids.iter().map(|id| latest.get(id.as_str()).copied()).collect())
    }
}

/// The sync's record as attributes of the budget item (`synced_rate`, `synced_burst`, N;
/// `synced_at`, N, seconds since the epoch), through `aws-sdk-dynamodb`.
#[derive(Debug, Clone)]
pub struct DynamoRecords {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoRecords {
    /// The table `table` (name or ARN), each attempt bounded by `call_timeout`.
    pub fn new(sdk_config: &aws_config::SdkConfig, table: &str, call_timeout: Duration) -> DynamoRecords {
        let config = aws_sdk_dynamodb::config::Builder::from(sdk_config)
            .timeout_config(timeouts(call_timeout))
            .build();
        DynamoRecords {
            client: aws_sdk_dynamodb::Client::from_conf(config),
            table: table.to_string(),
        }
    }
}

fn n(value: f64) -> AttributeValue {
    AttributeValue::N(format!("{value}"))
}

#[async_trait]
impl Records for DynamoRecords {
    async fn read(&self, key: &str) -> Result<Option<SyncRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(budget_pk(key)))
            .consistent_read(true)
            .projection_expression("#r, #b, #t")
            .expression_attribute_names("#r", "synced_rate")
            .expression_attribute_names("#b", "synced_burst")
            .expression_attribute_names("#t", "synced_at")
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let number = |name: &str| item.get(name)?.as_n().ok()?.parse::<f64>().ok();
        let (Some(rate_per_second), Some(burst)) = (number("synced_rate"), number("synced_burst")) else {
            return Ok(None);
        };
        Ok(Some(SyncRecord {
            rate_per_second,
            burst,
            at_epoch_s: number("synced_at").unwrap_or(0.0),
        }))
    }

    async fn write(&self, key: &str, record: &SyncRecord) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(budget_pk(key)))
            .condition_expression("attribute_exists(#pk) AND #rate = :r AND #burst = :b")
            .update_expression("SET #sr = :r, #sb = :b, #st = :t")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#rate", "rate")
            .expression_attribute_names("#burst", "burst")
            .expression_attribute_names("#sr", "synced_rate")
            .expression_attribute_names("#sb", "synced_burst")
            .expression_attribute_names("#st", "synced_at")
            .expression_attribute_values(":r", n(record.rate_per_second))
            .expression_attribute_values(":b", n(record.burst))
            .expression_attribute_values(":t", AttributeValue::N(format!("{:.3}", record.at_epoch_s)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(store_error(&e)),
        }
    }
}
