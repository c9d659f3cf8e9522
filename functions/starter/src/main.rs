//! The Lambda binary: config and clients are built once, then the runtime calls the dispatcher
//! (SQS batches, and the cap's status change and scheduled events).

use lambda_runtime::{service_fn, Error, LambdaEvent};
use sfn_pacer::Config;

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
    // Checks WORKFLOW_TYPE against the state machine once (exactly-once depends on it).
    let starter = &match sfn_pacer::aws::starter(config, &sdk_config).await {
        Ok(starter) => starter,
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(1);
        }
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        starter.dispatch(event).await
    }))
    .await
}
