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
    // WORKFLOW_TYPE is checked once against the state machine: exactly-once depends on it.
    let machines = sfn_pacer::aws::SfnStarter::new(&sdk_config, config.call_timeout);
    if let Err(e) = sfn_pacer::config::check_workflow_type(&config, &machines).await {
        tracing::error!("{e}");
        std::process::exit(1);
    }
    let starter = &sfn_pacer::aws::starter(config, &sdk_config);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        starter.dispatch(event).await
    }))
    .await
}
