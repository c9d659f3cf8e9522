//! `sfn-pacer-quota`: shows and changes the shared StartExecution budget of coordinated mode
//! (one item of the coordination table), live: running instances pick a change up with their
//! next lease; `sync` sets it to a share of the account's own quota. The logic is in the
//! libraries (`sfn_pacer_quota`, and `quota_sync` for the sync).
//!
//! `cap` shows and sets the cap on running executions (`MAX_RUNNING_EXECUTIONS`), live.
//!
//! Exit codes: 0 done; 1 `show` found no budget (`cap show`: no cap), or `sync` kept a budget
//! changed by hand since the last sync; 2 usage, validation or AWS error (one line on stderr naming
//! what failed).

use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use quota_sync::aws::{DynamoRecords, SdkMetrics, SdkServiceQuotas};
use quota_sync::sync::{sync, Action, Share, SyncRequest, DEFAULT_SHARE};
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::config::{default_quota_key, WorkflowType};
use sfn_pacer_quota::{Failure, Limits, TOOL};

/// Show or change the shared StartExecution budget of sfn-pacer's coordinated mode, live.
///
/// The budget is the item `quota#<KEY>` of the coordination table. The AWS endpoint, region
/// and credentials come from the usual AWS environment (AWS_ENDPOINT_URL, AWS_REGION,
/// AWS_ACCESS_KEY_ID, ...) unless given as flags.
#[derive(Parser, Debug)]
#[command(name = "sfn-pacer-quota", version)]
struct Cli {
    /// The coordination table (name or ARN).
    #[arg(long, env = "COORDINATION_TABLE", value_name = "TABLE")]
    table: String,
    /// The quota key (default: the Standard workflows' key, start-execution-standard).
    #[arg(long, env = "QUOTA_KEY", value_name = "KEY")]
    key: Option<String>,
    /// Use the Express workflows' default key, start-execution-express (instead of --key).
    #[arg(long)]
    express: bool,
    /// Bound of each DynamoDB call, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(flatten)]
    aws: local_stack::cli::AwsArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the budget: rate, burst, shared factor, effective rate, version, slots now.
    Show,
    /// Change the rate and/or burst, or create the budget.
    ///
    /// The flag left out keeps its value; with no budget yet, both are needed. The version is
    /// bumped, so running instances use the new values from their next lease (within a
    /// fraction of a second while they are busy). The shared factor is left as it is.
    Set {
        /// Starts per second the budget refills at (> 0).
        #[arg(long, value_name = "PER_SECOND", allow_negative_numbers = true)]
        rate: Option<f64>,
        /// Slots the bucket holds when full (≥ 1).
        #[arg(long, value_name = "SLOTS", allow_negative_numbers = true)]
        burst: Option<f64>,
    },
    /// Set the budget to a share of the account's StartExecution quota, read from AWS.
    ///
    /// The quota of the workflow type: Service Quotas (service code states; applied values by
    /// ListServiceQuotas and GetServiceQuota, else the defaults of ListAWSDefaultServiceQuotas),
    /// else CloudWatch's AWS/States ProvisionedBucketSize and ProvisionedRefillRate
    /// (APIName=StartExecution; Standard only). The budget becomes rate = share x refill,
    /// burst = share x bucket. A budget changed by hand (e.g. with `set`) since the last sync is
    /// kept, with exit code 1, unless --force.
    Sync {
        /// Fraction of the quota the budget takes, above 0 and at most 1; the rest is left to
        /// the account's other callers of StartExecution.
        #[arg(long, value_name = "FRACTION", default_value_t = DEFAULT_SHARE, allow_negative_numbers = true)]
        share: f64,
        /// Whose quota: standard or express (default: express with --express, else standard).
        #[arg(long, value_name = "TYPE", value_parser = ["standard", "express"])]
        workflow_type: Option<String>,
        /// Overwrite limits changed by hand since the last sync.
        #[arg(long)]
        force: bool,
        /// Read the quota and print what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show or change the cap on running executions (MAX_RUNNING_EXECUTIONS), live.
    Cap {
        /// The cap's key (the function's RUNNING_KEY: by default its state machine's name).
        #[arg(long, env = "RUNNING_KEY", value_name = "KEY")]
        running_key: String,
        #[command(subcommand)]
        command: CapCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CapCommand {
    /// Print the cap, the slots held, the oldest holders and when each is next checked (Standard)
    /// or expires (Express), and the waiting line.
    Show {
        /// How many of the oldest holders to list.
        #[arg(long, value_name = "N", default_value_t = 10)]
        oldest: usize,
    },
    /// Set the cap (or create it), without a redeploy: instances use it from their next read of
    /// the cap (a fifth of a second while busy). Lowered below the slots held, no execution is
    /// stopped: new starts wait until enough have ended.
    Set {
        /// The cap: running executions at most, 1 to 1,000,000.
        #[arg(long, value_name = "N")]
        max: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        // --help and --version: printed as clap prints them.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{TOOL}: {}", sfn_pacer_quota::usage_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    local_stack::cli::init_tracing("off");
    let key_on_command_line = matches.value_source("key") == Some(ValueSource::CommandLine);
    match run(cli, key_on_command_line).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("{TOOL}: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// The quota key: `--key`, else `--express`'s default, else `QUOTA_KEY`, else Standard's.
fn quota_key(cli: &Cli, key_on_command_line: bool) -> Result<String, Failure> {
    let key = match (&cli.key, cli.express) {
        (Some(_), true) if key_on_command_line => {
            return Err(Failure::Usage("give --key or --express, not both".into()))
        }
        (_, true) => default_quota_key(WorkflowType::Express).to_string(),
        (Some(key), false) => key.clone(),
        (None, false) => default_quota_key(WorkflowType::Standard).to_string(),
    };
    sfn_pacer_quota::validate_key(&key)?;
    Ok(key)
}

/// The sync's options, checked.
struct SyncArgs {
    share: Share,
    workflow_type: WorkflowType,
    force: bool,
    dry_run: bool,
}

fn sync_args(cli: &Cli) -> Result<Option<SyncArgs>, Failure> {
    let Command::Sync {
        share,
        workflow_type,
        force,
        dry_run,
    } = &cli.command
    else {
        return Ok(None);
    };
    let share = Share::new(*share).map_err(|reason| Failure::Usage(format!("--share {reason}")))?;
    let workflow_type = match (workflow_type.as_deref(), cli.express) {
        (Some("express"), _) | (None, true) => WorkflowType::Express,
        _ => WorkflowType::Standard,
    };
    Ok(Some(SyncArgs {
        share,
        workflow_type,
        force: *force,
        dry_run: *dry_run,
    }))
}

/// `cap show` and `cap set`.
async fn run_cap(cli: &Cli, store: &DynamoStore, key: &str, command: &CapCommand) -> Result<String, Failure> {
    use sfn_pacer_quota::cap;
    let table = cli.table.as_str();
    let now_ms = sfn_pacer::handler::now_epoch_ms();
    Ok(match command {
        CapCommand::Show { oldest } => {
            let shown = cap::show(store, table, key, *oldest).await?;
            match cli.json {
                true => cap::render_json(table, key, &shown, now_ms).to_string(),
                false => cap::render_text(table, key, &shown, now_ms),
            }
        }
        CapCommand::Set { max } => {
            let (before, _) = cap::set(store, table, key, *max).await?;
            let shown = cap::show(store, table, key, 10).await?;
            match cli.json {
                true => {
                    let mut value = cap::render_json(table, key, &shown, now_ms);
                    value["previous_cap"] = before.map(|b| b.settings.cap).into();
                    value.to_string()
                }
                false => cap::render_set_text(table, key, before.as_ref(), &shown, now_ms),
            }
        }
    })
}

/// Runs the command; the exit code when it did not fail (0, or 1 for a budget `sync` kept).
async fn run(cli: Cli, key_on_command_line: bool) -> Result<u8, Failure> {
    if let Command::Cap { running_key, command } = &cli.command {
        sfn_pacer_quota::validate_key(running_key).map_err(|_| {
            Failure::Usage(format!(
                "--running-key must be 1 to 200 characters, without control characters, got {running_key:?}"
            ))
        })?;
        if let CapCommand::Set { max } = command {
            sfn_pacer_quota::cap::validate_cap(*max)?;
        }
        let sdk_config = cli.aws.sdk_loader().load().await;
        let store = DynamoStore::new(&sdk_config, &cli.table, Duration::from_millis(cli.timeout_ms));
        let output = run_cap(&cli, &store, running_key, command).await?;
        println!("{}", output.trim_end());
        return Ok(0);
    }
    let key = quota_key(&cli, key_on_command_line)?;
    let sync_args = sync_args(&cli)?;
    let limits = match cli.command {
        Command::Set { rate, burst } => Some(Limits::new(rate, burst)?),
        _ => None,
    };
    if cli.table.trim().is_empty() {
        return Err(Failure::Usage("--table must name the coordination table".into()));
    }
    let sdk_config = cli.aws.sdk_loader().load().await;
    let timeout = Duration::from_millis(cli.timeout_ms);
    let store = DynamoStore::new(&sdk_config, &cli.table, timeout);
    let table = cli.table.as_str();
    if let Some(args) = sync_args {
        let request = SyncRequest {
            table: table.to_string(),
            key: key.clone(),
            workflow_type: args.workflow_type,
            share: args.share,
            force: args.force,
            dry_run: args.dry_run,
            now: sfn_pacer::start::clock::system_seconds(),
        };
        let quotas = SdkServiceQuotas::new(&sdk_config, timeout);
        let metrics = SdkMetrics::new(&sdk_config, timeout);
        let records = DynamoRecords::new(&sdk_config, table, timeout);
        let outcome = sync(&quotas, &metrics, &store, &records, &request).await?;
        let now = sfn_pacer::start::clock::system_seconds();
        let output = if cli.json {
            sfn_pacer_quota::render_sync_json(table, &key, args.workflow_type, &outcome, now).to_string()
        } else {
            sfn_pacer_quota::render_sync_text(table, &key, args.workflow_type, &outcome, now)
        };
        println!("{}", output.trim_end());
        if outcome.action == Action::Kept {
            eprintln!("{TOOL}: kept a budget changed by hand since the last sync; --force overwrites it");
            return Ok(1);
        }
        return Ok(0);
    }
    let output = match limits {
        None => {
            let state = sfn_pacer_quota::show(&store, table, &key).await?;
            let now = sfn_pacer::start::clock::system_seconds();
            if cli.json {
                sfn_pacer_quota::render_json(table, &key, &state, now).to_string()
            } else {
                sfn_pacer_quota::render_text(table, &key, &state, now)
            }
        }
        Some(limits) => {
            let outcome = sfn_pacer_quota::set(&store, table, &key, limits).await?;
            let now = sfn_pacer::start::clock::system_seconds();
            if cli.json {
                sfn_pacer_quota::render_set_json(table, &key, &outcome, now).to_string()
            } else {
                sfn_pacer_quota::render_set_text(table, &key, &outcome, now)
            }
        }
    };
    println!("{}", output.trim_end());
    Ok(0)
}
