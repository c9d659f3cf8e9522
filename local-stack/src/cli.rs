//! What the command-line tools (`local-esm`, `producer`) set up the same way: logs on stderr
//! and an SDK config from `--endpoint-url` / `--region` over the usual environment.

use std::io::IsTerminal;

/// Logs to stderr (coloured on a terminal), filtered by `RUST_LOG`, else at `default_level`.
pub fn init_tracing(default_level: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
}

/// The AWS flags of a tool (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AwsArgs {
    /// AWS endpoint URL (default: AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_SQS, else AWS).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// AWS region (default: AWS_REGION / the AWS profile).
    #[arg(long)]
    pub region: Option<String>,
}

impl AwsArgs {
    /// The SDK config loader of a tool: the environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, the
    /// profile), overridden by these flags when given.
    pub fn sdk_loader(&self) -> aws_config::ConfigLoader {
        let mut loader = sfn_pacer::aws::sdk_config_loader();
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        loader
    }
}
