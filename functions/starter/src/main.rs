//! The Lambda binary: config and clients are built once, then the runtime calls the handler.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::aws::{S3Objects, SfnStarter, SqsQueue};
use sfn_pacer::{Config, Starter};

#[tokio::main]
async fn main() -> Result<(), Error> {
    sfn_pacer::logs::init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            // One line that names the variable; Lambda reports the init failure.
            tracing::error!("{e}");
            std::process::exit(1);
        }
    };
    let sdk_config = sfn_pacer::aws::sdk_config_loader().load().await;
    let timeout = config.call_timeout;
    let sfn = Arc::new(SfnStarter::new(&sdk_config, timeout));
    if let Err(e) = sfn_pacer::config::check_workflow_type(&config, sfn.as_ref()).await {
        tracing::error!("{e}");
        std::process::exit(1);
    }
    let queue = Arc::new(SqsQueue::new(&sdk_config, timeout));
    let claim_check = config.claim_check_bucket.is_some();
    let starter = match config.coordination_table.clone() {
        // One table: the shared budget, and the per-message claims of batch mode.
        Some(table) => {
            let store = Arc::new(DynamoStore::new(&sdk_config, &table, timeout));
            Starter::coordinated(config, sfn, queue, store.clone()).with_claims(store)
        }
        None => Starter::new(config, sfn, queue),
    };
    let starter = match claim_check {
        true => starter.with_claim_check(Arc::new(S3Objects::new(&sdk_config, timeout))),
        false => starter,
    };
    let starter = &starter;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        starter.handle(event).await
    }))
    .await
}
