//! The account's StartExecution quota for a workflow type, read from where AWS publishes it.
//!
//! Order, per quantity (the bucket's size in starts, its refill in starts per second):
//! 1. Service Quotas, service code `states`: the quota found by name with `ListServiceQuotas`,
//!    its applied value read with `GetServiceQuota`;
//! 2. else the default value that `ListAWSDefaultServiceQuotas` lists under that name;
//! 3. else (Standard only) CloudWatch: the latest datapoint of `AWS/States`
//!    `ProvisionedBucketSize` / `ProvisionedRefillRate` with `APIName=StartExecution`.
//!
//! A source that fails (no permission, unreachable) is noted and the next one is tried, so a
//! sync still works where Service Quotas is unavailable. Express: Service Quotas entries whose
//! names say Express; CloudWatch's StartExecution metrics are not used, because AWS does not
//! say which of the two buckets they report.

use async_trait::async_trait;
use sfn_pacer::config::WorkflowType;

use crate::failure::Failure;

/// Service Quotas' code for Step Functions.
pub const SERVICE_CODE: &str = "states";
/// The CloudWatch namespace and dimension of Step Functions' API metrics.
pub const METRICS_NAMESPACE: &str = "AWS/States";
/// `APIName` of the StartExecution metrics.
pub const API_NAME: &str = "StartExecution";

/// The two quantities of a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// The bucket's size, in starts.
    Bucket,
    /// The refill rate, in starts per second.
    Refill,
}

impl Quantity {
    /// Both, in the order a reading lists them.
    pub const BOTH: [Quantity; 2] = [Quantity::Bucket, Quantity::Refill];

    /// The Service Quotas name of the Standard quota.
    pub fn quota_name(self) -> &'static str {
        match self {
            Quantity::Bucket => "StartExecution throttle token bucket size",
            Quantity::Refill => "StartExecution throttle token refill rate per second",
        }
    }

    /// The `AWS/States` metric that reports it.
    pub fn metric_name(self) -> &'static str {
        match self {
            Quantity::Bucket => "ProvisionedBucketSize",
            Quantity::Refill => "ProvisionedRefillRate",
        }
    }

    /// Words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Quantity::Bucket => "bucket size",
            Quantity::Refill => "refill rate",
        }
    }

    /// Whether Service Quotas' `name` is this quantity's quota for `workflow_type`: the exact
    /// name for Standard; for Express, a StartExecution name of the same kind that says Express.
    pub fn matches(self, workflow_type: WorkflowType, name: &str) -> bool {
        let name = name.trim();
        match workflow_type {
            WorkflowType::Standard => name == self.quota_name(),
            WorkflowType::Express => {
                let lower = name.to_ascii_lowercase();
                lower.contains("startexecution") && lower.contains("express") && lower.contains(self.describe())
            }
        }
    }

    /// Whether `value` can be this quantity: finite, and at least 1 start (a bucket) or above 0
    /// starts per second (a refill).
    fn valid(self, value: f64) -> bool {
        value.is_finite()
            && match self {
                Quantity::Bucket => value >= 1.0,
                Quantity::Refill => value > 0.0,
            }
    }
}

/// A quota as Service Quotas lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceQuota {
    /// Its code (`L-…`).
    pub code: String,
    /// Its name.
    pub name: String,
    /// Its value, if listed.
    pub value: Option<f64>,
}

/// A source could not be read; the SDK's error on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError(pub String);

/// Service Quotas, for one region (the SDK config's).
#[async_trait]
pub trait ServiceQuotas: Send + Sync {
    /// `ListServiceQuotas`, every page: the quotas of `service_code` with applied values.
    async fn list_applied(&self, service_code: &str) -> Result<Vec<ServiceQuota>, SourceError>;
    /// `GetServiceQuota`: the applied value; `None` when there is none (`NoSuchResourceException`).
    async fn get_applied(&self, service_code: &str, quota_code: &str) -> Result<Option<f64>, SourceError>;
    /// `ListAWSDefaultServiceQuotas`, every page.
    async fn list_defaults(&self, service_code: &str) -> Result<Vec<ServiceQuota>, SourceError>;
}

/// CloudWatch's Step Functions API metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricWindow {
    /// How far back to look, in seconds.
    pub lookback_seconds: u64,
    /// The period of a datapoint, in seconds (a multiple of 60).
    pub period_seconds: u32,
}

/// The window [`Metrics::latest`] reads: 5-minute maxima over the last 3 hours (the metrics
/// exist only while StartExecution is called).
pub const METRIC_WINDOW: MetricWindow = MetricWindow {
    lookback_seconds: 3 * 3600,
    period_seconds: 300,
};

/// CloudWatch, for one region.
#[async_trait]
pub trait Metrics: Send + Sync {
    /// `GetMetricData`: for each `AWS/States` metric named, with `APIName=StartExecution`, the
    /// latest datapoint (statistic Maximum per `window.period_seconds`) within the window;
    /// `None` where there is none.
    async fn latest(&self, metric_names: &[&str], window: MetricWindow) -> Result<Vec<Option<f64>>, SourceError>;
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Service Quotas' applied value (`GetServiceQuota`) of the quota `code`.
    Applied {
        /// The quota code.
        code: String,
    },
    /// Service Quotas' default value (`ListAWSDefaultServiceQuotas`) of the quota `code`.
    Default {
        /// The quota code.
        code: String,
    },
    /// The latest datapoint of a CloudWatch metric.
    Metric {
        /// `AWS/States` metric name.
        name: &'static str,
    },
}

impl Source {
    /// A short tag for JSON and metrics: `service-quotas-applied`, `service-quotas-default`,
    /// `cloudwatch`.
    pub fn tag(&self) -> &'static str {
        match self {
            Source::Applied { .. } => "service-quotas-applied",
            Source::Default { .. } => "service-quotas-default",
            Source::Metric { .. } => "cloudwatch",
        }
    }

    /// Where it came from, in words.
    pub fn describe(&self) -> String {
        match self {
            Source::Applied { code } => format!("Service Quotas, applied value of {code} (GetServiceQuota)"),
            Source::Default { code } => format!("Service Quotas, AWS default of {code} (ListAWSDefaultServiceQuotas)"),
            Source::Metric { name } => {
                format!("CloudWatch {METRICS_NAMESPACE} {name}, APIName={API_NAME}, latest 5-minute maximum")
            }
        }
    }
}

/// One quantity, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Starts (the bucket) or starts per second (the refill).
    pub value: f64,
    /// Where from.
    pub source: Source,
}

/// The quota of a workflow type.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    /// The bucket's size, starts.
    pub bucket: Reading,
    /// The refill rate, starts per second.
    pub refill: Reading,
    /// What failed or was missing on the way (one line each), in the order tried.
    pub notes: Vec<String>,
}

/// What a read found so far: each quantity's reading, and what failed or was missing.
#[derive(Default)]
struct Search {
    found: [Option<Reading>; 2],
    notes: Vec<String>,
}

impl Search {
    /// The quantities not found yet.
    fn missing(&self) -> Vec<Quantity> {
        Quantity::BOTH
            .into_iter()
            .filter(|q| self.found[*q as usize].is_none())
            .collect()
    }

    fn found(&mut self, quantity: Quantity, value: f64, source: Source) {
        self.found[quantity as usize] = Some(Reading { value, source });
    }

    /// Service Quotas' applied values: listed by name, each read with GetServiceQuota.
    async fn applied(&mut self, quotas: &dyn ServiceQuotas, workflow_type: WorkflowType) {
        let listed = match quotas.list_applied(SERVICE_CODE).await {
            Ok(listed) => listed,
            Err(e) => return self.notes.push(format!("ListServiceQuotas: {}", e.0)),
        };
        for quantity in Quantity::BOTH {
            let Some(quota) = listed.iter().find(|q| quantity.matches(workflow_type, &q.name)) else {
                self.notes
                    .push(format!("ListServiceQuotas lists no applied {}", quantity.describe()));
                continue;
            };
            let code = &quota.code;
            match quotas.get_applied(SERVICE_CODE, code).await {
                Ok(Some(value)) if quantity.valid(value) => {
                    self.found(quantity, value, Source::Applied { code: code.clone() })
                }
                Ok(Some(value)) => self
                    .notes
                    .push(format!("GetServiceQuota {code}: unusable value {value}")),
                Ok(None) => self.notes.push(format!("GetServiceQuota {code}: no applied value")),
                Err(e) => self.notes.push(format!("GetServiceQuota {code}: {}", e.0)),
            }
        }
    }

    /// AWS's defaults, for what [`Search::applied`] did not find.
    async fn defaults(&mut self, quotas: &dyn ServiceQuotas, workflow_type: WorkflowType) {
        let listed = match quotas.list_defaults(SERVICE_CODE).await {
            Ok(listed) => listed,
            Err(e) => return self.notes.push(format!("ListAWSDefaultServiceQuotas: {}", e.0)),
        };
        for quantity in self.missing() {
            let quota = listed.iter().find(|q| quantity.matches(workflow_type, &q.name));
            match quota.map(|q| (q, q.value)) {
                Some((q, Some(value))) if quantity.valid(value) => {
                    self.found(quantity, value, Source::Default { code: q.code.clone() })
                }
                Some((q, value)) => self.notes.push(format!(
                    "ListAWSDefaultServiceQuotas {}: unusable value {value:?}",
                    q.code
                )),
                None => self
                    .notes
                    .push(format!("ListAWSDefaultServiceQuotas lists no {}", quantity.describe())),
            }
        }
    }

    /// CloudWatch's `ProvisionedBucketSize` and `ProvisionedRefillRate`, for what is still missing.
    async fn metrics(&mut self, metrics: &dyn Metrics) {
        let wanted = self.missing();
        let names: Vec<&str> = wanted.iter().map(|q| q.metric_name()).collect();
        let values = match metrics.latest(&names, METRIC_WINDOW).await {
            Ok(values) => values,
            Err(e) => return self.notes.push(format!("GetMetricData: {}", e.0)),
        };
        for (quantity, value) in wanted.into_iter().zip(values) {
            let name = quantity.metric_name();
            match value {
                Some(value) if quantity.valid(value) => self.found(quantity, value, Source::Metric { name }),
                Some(value) => self.notes.push(format!("{name}: unusable value {value}")),
                None => self.notes.push(format!(
                    "{name}: no datapoint in the last {} hours (the metric exists while StartExecution is called)",
                    METRIC_WINDOW.lookback_seconds / 3600
                )),
            }
        }
    }
}

/// Reads the StartExecution quota of `workflow_type` (see the module's docs for the order).
pub async fn read_quota(
    quotas: &dyn ServiceQuotas,
    metrics: &dyn Metrics,
    workflow_type: WorkflowType,
) -> Result<Quota, Failure> {
    let mut search = Search::default();
    search.applied(quotas, workflow_type).await;
    if !search.missing().is_empty() {
        search.defaults(quotas, workflow_type).await;
    }
    if !search.missing().is_empty() {
        match workflow_type {
            WorkflowType::Standard => search.metrics(metrics).await,
            WorkflowType::Express => search.notes.push(
                "CloudWatch not read for Express: its StartExecution metrics do not say which bucket they report"
                    .into(),
            ),
        }
    }
    let what: Vec<&str> = search.missing().iter().map(|q| q.describe()).collect();
    match search.found {
        [Some(bucket), Some(refill)] => Ok(Quota {
            bucket,
            refill,
            notes: search.notes,
        }),
        _ => {
            let kind = match workflow_type {
                WorkflowType::Standard => "Standard",
                WorkflowType::Express => "Express",
            };
            Err(Failure::NoQuota(format!(
                "no StartExecution {} found for {kind} workflows: {}; set the budget with `set` instead",
                what.join(" or "),
                search.notes.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests;
