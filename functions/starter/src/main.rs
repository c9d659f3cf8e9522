//! The Lambda binary: config and clients are built once, then the runtime calls the handler.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use sfn_pacer::aws::{SfnStarter, SqsQueue};
use sfn_pacer::dynamo::DynamoStore;
use sfn_pacer::{Config, Starter};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            // One line that names the variable; Lambda reports the init failure.
            tracing::error!("{e}");
            std::process::exit(1);
        }
    };
    let sdk_config = sfn_pacer::aws::sdk_config_loader().load().await;
    let sfn = Arc::new(SfnStarter::new(&sdk_config, config.call_timeout));
    let queue = Arc::new(SqsQueue::new(&sdk_config, config.call_timeout));
    let starter = match config.coordination_table.clone() {
        Some(table) => {
            let store = Arc::new(DynamoStore::new(&sdk_config, &table, config.call_timeout));
            Starter::coordinated(config, sfn, queue, store)
        }
        None => Starter::new(config, sfn, queue),
    };
    let starter = &starter;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        starter.handle(event).await
    }))
    .await
}
