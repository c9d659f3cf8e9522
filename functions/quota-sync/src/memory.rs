//! In-memory doubles of the sync's sources and record, for tests without a network: Service
//! Quotas and CloudWatch as fixed answers (or a fixed failure), and the record kept beside a
//! `MemoryStore` budget with the DynamoDB adapter's condition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sfn_pacer::start::memory::MemoryStore;
use sfn_pacer::start::table::StoreError;

use crate::quota::{MetricWindow, Metrics, ServiceQuota, ServiceQuotas, SourceError};
use crate::sync::{Records, SyncRecord};

/// Service Quotas' answers: applied and default quotas; `failure` makes every call fail.
#[derive(Debug, Clone, Default)]
pub struct MemoryQuotas {
    /// What `ListServiceQuotas` lists (`GetServiceQuota` reads the same values).
    pub applied: Vec<ServiceQuota>,
    /// What `ListAWSDefaultServiceQuotas` lists.
    pub defaults: Vec<ServiceQuota>,
    /// Every call fails with this (e.g. `AccessDeniedException: ...`).
    pub failure: Option<String>,
}

impl MemoryQuotas {
    fn check(&self) -> Result<(), SourceError> {
        match &self.failure {
            Some(message) => Err(SourceError(message.clone())),
            None => Ok(()),
        }
    }
}

/// A quota of the `states` service.
pub fn quota(code: &str, name: &str, value: f64) -> ServiceQuota {
    ServiceQuota {
        code: code.into(),
        name: name.into(),
        value: Some(value),
    }
}

#[async_trait]
impl ServiceQuotas for MemoryQuotas {
    async fn list_applied(&self, _service_code: &str) -> Result<Vec<ServiceQuota>, SourceError> {
        self.check().map(|()| self.applied.clone())
    }

    async fn get_applied(&self, _service_code: &str, quota_code: &str) -> Result<Option<f64>, SourceError> {
        self.check()?;
        Ok(self.applied.iter().find(|q| q.code == quota_code).and_then(|q| q.value))
    }

    async fn list_defaults(&self, _service_code: &str) -> Result<Vec<ServiceQuota>, SourceError> {
        self.check().map(|()| self.defaults.clone())
    }
}

/// CloudWatch's latest datapoints by metric name; `failure` makes the call fail.
#[derive(Debug, Clone, Default)]
pub struct MemoryMetrics {
    /// Metric name → latest value.
    pub latest: HashMap<String, f64>,
    /// The call fails with this.
    pub failure: Option<String>,
}

#[async_trait]
impl Metrics for MemoryMetrics {
    async fn latest(&self, metric_names: &[&str], _window: MetricWindow) -> Result<Vec<Option<f64>>, SourceError> {
        if let Some(message) = &self.failure {
            return Err(SourceError(message.clone()));
        }
        Ok(metric_names.iter().map(|n| self.latest.get(*n).copied()).collect())
    }
}

/// Records beside a [`MemoryStore`]'s budgets, written on the DynamoDB adapter's condition
/// (the budget exists and its limits are the record's).
#[derive(Debug, Clone)]
pub struct MemoryRecords {
    store: Arc<MemoryStore>,
    records: Arc<Mutex<HashMap<String, SyncRecord>>>,
}

impl MemoryRecords {
    /// Records of the budgets in `store`.
    pub fn new(store: Arc<MemoryStore>) -> MemoryRecords {
        MemoryRecords {
            store,
            records: Arc::default(),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, SyncRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Records for MemoryRecords {
    async fn read(&self, key: &str) -> Result<Option<SyncRecord>, StoreError> {
        Ok(self.store.item(key).and_then(|_| self.records().get(key).cloned()))
    }

    async fn write(&self, key: &str, record: &SyncRecord) -> Result<bool, StoreError> {
        let holds = self
            .store
            .item(key)
            .is_some_and(|b| b.rate_per_second == record.rate_per_second && b.burst == record.burst);
        if holds {
            self.records().insert(key.to_string(), record.clone());
        }
        Ok(holds)
    }
}
