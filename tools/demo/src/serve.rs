//! `sfn-pacer-demo serve`: moto on a fixed port with resources that match `events/*.json`,
//! and the function under plain `cargo lambda watch`, for `make invoke`. Runs until Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use local_stack::moto::{self, aws_env, Endpoints, Moto, MotoOptions};
use local_stack::paths;
use local_stack::process::Supervisor;

use crate::run::{function_env, warm_up, DemoError, FUNCTION_NAME};
use crate::stack;

/// The resources' name: `events/*.json` name the queue `arn:aws:sqs:us-east-1:123456789012:sfn-pacer-work`.
pub const NAME: &str = "sfn-pacer-work";

/// The settings of `serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// moto's port on 127.0.0.1.
    pub moto_port: u16,
    /// The invoke API's port on 127.0.0.1.
    pub invoke_port: u16,
    /// Global starts per second.
    pub rate: f64,
    /// Global burst.
    pub burst: f64,
    /// The longest wait for the first build and answer of the function, seconds.
    pub build_timeout: u64,
    /// Stop after this many seconds at most.
    pub max_seconds: u64,
    /// Where moto's log goes.
    pub out_dir: PathBuf,
}

/// Runs until `max_seconds` or a child's end; the caller handles Ctrl-C and the cleanup.
pub async fn serve(cfg: &ServeConfig, sup: &Supervisor) -> Result<(), DemoError> {
    let cargo_lambda = paths::cargo_lambda().map_err(DemoError::Setup)?;
    if moto::port_in_use(cfg.invoke_port) {
        return Err(DemoError::Setup(format!(
            "127.0.0.1:{} is already in use (another `make watch`?): stop it, or pass --invoke-port",
            cfg.invoke_port
        )));
    }
    let log_dir = cfg.out_dir.join("serve");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| DemoError::Setup(format!("cannot create {}: {e}", log_dir.display())))?;
    let moto_log = log_dir.join("moto.log");
    let options = MotoOptions {
        port: Some(cfg.moto_port),
        log: Some(moto_log.clone()),
        ..MotoOptions::default()
    };
    let server = Moto::start_in(sup, &options).await.map_err(DemoError::Setup)?;
    let endpoint = server.endpoint();
    let sdk = server.sdk_config().await;
    let stack = moto::provision(&sdk, NAME, 5, 60).await.map_err(DemoError::Setup)?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let fifo_url = stack::create_fifo_queue(&sqs, &format!("{NAME}.fifo"), 60)
        .await
        .map_err(DemoError::Setup)?;

    let mut command = Command::new(&cargo_lambda);
    command
        .args(["lambda", "watch", "--invoke-address", "127.0.0.1", "--invoke-port"])
        .arg(cfg.invoke_port.to_string())
        .current_dir(paths::workspace_root())
        .stdin(Stdio::null());
    aws_env(&mut command, &Endpoints::single(&endpoint));
    command.envs(function_env(
        &stack.state_machine_arn,
        &stack.dlq_url,
        cfg.rate,
        cfg.burst,
        1,
    ));
    let (watch, _) = sup
        .spawn("cargo-lambda-watch", command)
        .map_err(|e| DemoError::Setup(format!("cannot start {}: {e}", cargo_lambda.display())))?;
    moto::wait_for_port(cfg.invoke_port, Duration::from_secs(60), &watch, "see its output above")
        .await
        .map_err(DemoError::Setup)?;
    eprintln!("sfn-pacer-demo: building and starting the function (the first build can take minutes)…");
    warm_up(
        cfg.invoke_port,
        FUNCTION_NAME,
        Duration::from_secs(cfg.build_timeout),
        &[watch.clone(), server.handle.clone()],
    )
    .await
    .map_err(DemoError::Setup)?;

    println!();
    println!("sfn-pacer local stack is up (everything on 127.0.0.1):");
    println!(
        "  moto            {endpoint}   (AWS_ENDPOINT_URL; moto's log: {})",
        moto_log.display()
    );
    println!("  queue           {}  ({})", stack.queue_url, stack.queue_arn);
    println!("  FIFO queue      {fifo_url}");
    println!("  DLQ             {}", stack.dlq_url);
    println!("  state machine   {}", stack.state_machine_arn);
    println!(
        "  function        {FUNCTION_NAME} under cargo lambda watch on 127.0.0.1:{}",
        cfg.invoke_port
    );
    println!();
    println!("In another terminal:");
    println!("  make invoke EVENT=events/batch.json      # three good messages -> {{\"batchItemFailures\":[]}}");
    println!("  make invoke EVENT=events/bad-body.json   # one body is not JSON -> the DLQ, with its reason");
    println!("  make invoke EVENT=events/fifo.json       # a FIFO batch with two message groups");
    println!("Ctrl-C stops moto and cargo lambda watch.");
    println!();

    let deadline = Instant::now() + Duration::from_secs(cfg.max_seconds);
    // The stack is fresh (the warm-up carried no record): report every change from nothing.
    let mut last = (0, 0);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for h in [&server.handle, &watch] {
            if let Some(exit) = h.exit() {
                return Err(DemoError::Run(format!("{} stopped unexpectedly ({exit})", h.name)));
            }
        }
        let executions = moto::list_executions(&sfn, &stack.state_machine_arn)
            .await
            .map(|e| e.len());
        let dlq = stack::queue_counts(&sqs, &stack.dlq_url).await.map(|c| c.total());
        if let (Ok(executions), Ok(dlq)) = (executions, dlq) {
            if last != (executions, dlq) {
                println!("sfn-pacer-demo: {executions} execution(s) started, {dlq} message(s) in the DLQ");
                last = (executions, dlq);
            }
        }
    }
    eprintln!("sfn-pacer-demo: --max-seconds {} reached: stopping", cfg.max_seconds);
    Ok(())
}
