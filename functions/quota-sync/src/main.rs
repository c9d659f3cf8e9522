//! The scheduled quota sync (template parameter `QuotaSyncSchedule`): config and clients are
//! built once; each invocation (an EventBridge Scheduler event, whose content is not read) runs
//! one sync and logs one line. A sync that fails fails the invocation (metric Errors).

use std::time::Duration;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use quota_sync::aws::{DynamoRecords, SdkMetrics, SdkServiceQuotas};
use quota_sync::config::SyncConfig;
use quota_sync::lambda::{invoke, log_line, Deps};
use sfn_pacer::aws::dynamo::DynamoStore;

/// The bound of each AWS call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Error> {
    sfn_pacer::logs::init();
    let config = match SyncConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(1);
        }
    };
    let sdk_config = sfn_pacer::aws::sdk_config_loader().load().await;
    let quotas = SdkServiceQuotas::new(&sdk_config, CALL_TIMEOUT);
    let metrics = SdkMetrics::new(&sdk_config, CALL_TIMEOUT);
    let store = DynamoStore::new(&sdk_config, &config.table, CALL_TIMEOUT);
    let records = DynamoRecords::new(&sdk_config, &config.table, CALL_TIMEOUT);
    let deps = Deps {
        quotas: &quotas,
        metrics: &metrics,
        store: &store,
        records: &records,
    };
    let (deps, config) = (&deps, &config);
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        let now = sfn_pacer::start::clock::system_seconds();
        match invoke(deps, config, now).await {
            Ok(outcome) => {
                let line = log_line(&outcome, config, (now * 1000.0) as u64);
                println!("{line}");
                Ok(serde_json::json!({"action": outcome.action.word(), "summary": outcome.summary()}))
            }
            Err(failure) => {
                tracing::error!("quota sync failed: {failure}");
                Err(Error::from(failure.to_string()))
            }
        }
    }))
    .await
}
