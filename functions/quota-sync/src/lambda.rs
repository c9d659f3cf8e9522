//! The scheduled sync's invocation: one sync, never forced, and its one log line, which is
//! also the embedded-metric-format document that publishes `QuotaRate` and `QuotaBurst`.

use serde_json::{json, Value};
use sfn_pacer::start::budget::Store;

use crate::config::SyncConfig;
use crate::quota::{Metrics, ServiceQuotas};
use crate::sync::{sync, Records, SyncOutcome, SyncRequest};
use crate::Failure;

/// What an invocation needs: the sources, the budget and its record.
pub struct Deps<'a> {
    /// Service Quotas.
    pub quotas: &'a dyn ServiceQuotas,
    /// CloudWatch.
    pub metrics: &'a dyn Metrics,
    /// The budget.
    pub store: &'a dyn Store,
    /// The sync's record.
    pub records: &'a dyn Records,
}

/// One scheduled sync at `now` (seconds since the epoch): hand changes are kept (no force).
pub async fn invoke(deps: &Deps<'_>, config: &SyncConfig, now: f64) -> Result<SyncOutcome, Failure> {
    let request = SyncRequest {
        table: config.table.clone(),
        key: config.key.clone(),
        workflow_type: config.workflow_type,
        share: config.share,
        force: false,
        dry_run: false,
        now,
    };
    sync(deps.quotas, deps.metrics, deps.store, deps.records, &request).await
}

/// The sync's log line: `message` (the summary), the quota, its sources, the budget and what
/// was done; and, as EMF, `QuotaRate` (starts per second) and `QuotaBurst` (starts) in the
/// namespace `config.metrics_namespace`, dimension `QuotaKey`.
pub fn log_line(outcome: &SyncOutcome, config: &SyncConfig, timestamp_ms: u64) -> Value {
    json!({
        "message": outcome.summary(),
        "QuotaKey": config.key,
        "QuotaRate": outcome.quota.refill.value,
        "QuotaBurst": outcome.quota.bucket.value,
        "rate_source": outcome.quota.refill.source.tag(),
        "burst_source": outcome.quota.bucket.source.tag(),
        "notes": outcome.quota.notes,
        "share": outcome.share,
        "action": outcome.action.word(),
        "hand_changed": outcome.hand_changed,
        "budget_rate_per_second": outcome.after.as_ref().map(|b| b.rate_per_second),
        "budget_burst": outcome.after.as_ref().map(|b| b.burst),
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": config.metrics_namespace,
                "Dimensions": [["QuotaKey"]],
                "Metrics": [
                    {"Name": "QuotaRate", "Unit": "Count/Second"},
                    {"Name": "QuotaBurst", "Unit": "Count"},
                ],
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sfn_pacer::start::budget::{BudgetState, Update};
    use sfn_pacer::start::memory::MemoryStore;

    use super::*;
    use crate::memory::{quota, MemoryMetrics, MemoryQuotas, MemoryRecords};
    use crate::quota::Quantity;
    use crate::sync::Action;

    #[tokio::test]
    async fn a_scheduled_sync_sets_the_budget_and_logs_one_emf_line() {
        let config = SyncConfig::from_lookup(|k| (k == "COORDINATION_TABLE").then(|| "coord".to_string())).unwrap();
        let store = Arc::new(MemoryStore::new());
        store
            .write(&config.key, &Update::Create(BudgetState::new(150.0, 800.0)))
            .await
            .unwrap();
        let quotas = MemoryQuotas {
            applied: vec![
                quota("L-B", Quantity::Bucket.quota_name(), 1300.0),
                quota("L-R", Quantity::Refill.quota_name(), 300.0),
            ],
            ..MemoryQuotas::default()
        };
        let records = MemoryRecords::new(store.clone());
        let deps = Deps {
            quotas: &quotas,
            metrics: &MemoryMetrics::default(),
            store: store.as_ref(),
            records: &records,
        };
        let outcome = invoke(&deps, &config, 1_800_000_000.0).await.unwrap();
        assert_eq!(outcome.action, Action::Set);
        let budget = store.item(&config.key).unwrap();
        assert_eq!((budget.rate_per_second, budget.burst), (270.0, 1170.0));

        let line = log_line(&outcome, &config, 1_800_000_000_000);
        let text = line.to_string();
        assert!(!text.contains('\n'));
        assert_eq!(line["QuotaRate"], 300.0);
        assert_eq!(line["QuotaBurst"], 1300.0);
        assert_eq!(line["QuotaKey"], "start-execution-standard");
        assert_eq!(line["action"], "set");
        let declared = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "SfnPacer");
        assert_eq!(declared["Dimensions"], json!([["QuotaKey"]]));
        let names: Vec<&str> = declared["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["QuotaRate", "QuotaBurst"]);
        assert!(
            line["message"]
                .as_str()
                .unwrap()
                .contains("budget set from rate 150 starts/s, burst 800 to rate 270 starts/s, burst 1170"),
            "{line}"
        );

        // A hand change since: kept, and still one line with the quota.
        store
            .write(&config.key, &budget.plan_set_limits(100.0, 500.0, 1_800_000_001.0))
            .await
            .unwrap();
        let outcome = invoke(&deps, &config, 1_800_000_100.0).await.unwrap();
        assert_eq!(outcome.action, Action::Kept);
        assert_eq!(store.item(&config.key).unwrap().rate_per_second, 100.0);
        assert_eq!(log_line(&outcome, &config, 0)["action"], "kept");
    }
}
