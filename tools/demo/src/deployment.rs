//! One deployment of the function in `sfn-pacer-demo run` (`a`, `b`): its own queue and DLQ,
//! state machine, function `starter-<name>` (N `starter` processes on its own
//! `cargo lambda watch --only-lambda-apis`), local-esm and producer, fed with its share of the
//! generated messages.
//! What the deployments share is the budget: one item of the coordination table, or nothing
//! (the static split).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::accounting::{account, Accounting, Expected, Shape};
use crate::emf::{self, EmfLog, FunctionTotals};
use crate::feed::{self, Done, FeedState, Feeder};
use crate::rate;
use crate::report::{DeploymentReport, Throughput};
use crate::run::{warm_up, FUNCTION_NAME};
use crate::stack::{self, QueueCounts};
use crate::tools::Binaries;
use local_stack::moto::Listed;
use local_stack::moto::{self, aws_env, log_to, Endpoints, REGION};
use local_stack::paths;
use local_stack::process::{Exit, Handle, Pipes, Supervisor};

/// The prefix of every deployment's queue (`<prefix>-<name>`, its DLQ `…-dlq`) and state machine.
pub const RESOURCE_PREFIX: &str = "sfn-pacer-demo";
/// The function's time budget per invocation under cargo lambda watch (its deadline is in 1970).
pub const LOCAL_DEADLINE_MS: u64 = 10_000;
/// local-esm's function timeout, seconds: the function's budget and some.
pub const FUNCTION_TIMEOUT_SECONDS: u64 = LOCAL_DEADLINE_MS / 1000 + 5;

/// The deployments' names: `a`, `b`, … (at most 26).
pub fn names(deployments: u32) -> Vec<String> {
    (b'a'..=b'z')
        .take(deployments as usize)
        .map(|c| char::from(c).to_string())
        .collect()
}

/// Deals `messages` to `n` deployments in turn (message `i` to deployment `i mod n`), so each
/// gets its share of the bad ones and the ids stay unique across deployments.
pub fn deal(messages: Vec<Expected>, n: usize) -> Vec<Vec<Expected>> {
    let mut hands = vec![Vec::new(); n.max(1)];
    for (i, message) in messages.into_iter().enumerate() {
        hands[i % n.max(1)].push(message);
    }
    hands
}

/// Where the deployments run: what every child needs.
pub struct Site<'a> {
    /// The owner of every child.
    pub sup: &'a Supervisor,
    /// The workspace binaries.
    pub bins: &'a Binaries,
    /// moto's SQS and Step Functions endpoints.
    pub endpoints: &'a Endpoints,
    /// The run's log folder.
    pub run_dir: &'a Path,
    /// When the run began (EMF samples are timed from it).
    pub t0: Instant,
}

impl Site<'_> {
    /// A log file of the run.
    pub fn log(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    fn spawn(&self, name: &str, command: Command, program: &Path) -> Result<(Handle, Pipes), String> {
        self.sup
            .spawn(name, command)
            .map_err(|e| format!("cannot start {}: {e}", program.display()))
    }
}

/// The shared budget, when the deployments coordinate.
#[derive(Clone, Debug)]
pub struct Coordination {
    /// `COORDINATION_TABLE`.
    pub table: String,
    /// `QUOTA_KEY`.
    pub quota_key: String,
    /// DynamoDB's endpoint (`AWS_ENDPOINT_URL_DYNAMODB`).
    pub endpoint: String,
}

/// What every deployment's function is told besides its own resources.
#[derive(Clone, Debug)]
pub struct FunctionSettings {
    /// `STARTS_PER_SECOND`.
    pub rate: f64,
    /// `STARTS_BURST`.
    pub burst: f64,
    /// `MAX_CONCURRENCY`: its instances.
    pub instances: u32,
    /// `MESSAGES_PER_EXECUTION`: 1 starts one execution per message; more groups them (on
    /// Standard, with claims in the coordination table, which must then be set).
    pub messages_per_execution: u32,
    /// The coordination table; `None`: the static split.
    pub coordination: Option<Coordination>,
    /// The cap on running executions (`--max-running`).
    pub cap: Option<crate::cap::CapSettings>,
}

/// One deployment and its processes.
pub struct Deployment {
    /// `a`, `b`, ….
    pub name: String,
    /// The messages fed to it.
    pub expected: Vec<Expected>,
    /// Its work queue.
    pub queue_url: String,
    /// Its DLQ.
    pub dlq_url: String,
    /// Its state machine.
    pub state_machine_arn: String,
    /// Its `cargo lambda watch`'s port (Runtime API and invoke API); 0 until started.
    pub invoke_port: u16,
    /// Its `cargo lambda watch`.
    watch: Option<Handle>,
    /// Its starters' EMF lines, summed.
    emf: Arc<Mutex<EmfLog>>,
    /// Messages done with: by its function (started, duplicate or dead-lettered) or redriven.
    done: Arc<Done>,
    /// Its starter processes.
    starters: Vec<Handle>,
    readers: Vec<JoinHandle<()>>,
    /// Its local-esm.
    esm: Option<Handle>,
    /// Its producer.
    producer: Option<Handle>,
    /// How its producer ended, once it has.
    pub producer_exit: Option<Exit>,
    feeder: Option<JoinHandle<()>>,
    /// What the feeding of its producer has done.
    feed: Arc<Mutex<FeedState>>,
}

/// What a deployment looks like now, for the live line.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// Its work queue (`None` if the read failed).
    pub queue: Option<QueueCounts>,
    /// Its DLQ's depth.
    pub dlq: Option<u64>,
    /// Messages its function started (EMF `Started`).
    pub started: u64,
    /// Executions its function started (EMF `Executions`).
    pub executions: u64,
    /// Its executions per second over the last [`rate::WINDOW_SECONDS`].
    pub rate: f64,
    /// Its messages started per second over the last [`rate::WINDOW_SECONDS`].
    pub message_rate: f64,
}

/// What was found in moto after the run.
pub struct Found {
    /// The executions of its state machine, with their start times.
    pub listed: Vec<Listed>,
    /// The verdict per message.
    pub accounting: Accounting,
}

impl Deployment {
    /// Creates its queue, DLQ (on the SQS moto) and state machine (on the Step Functions moto).
    pub async fn provision(
        name: &str,
        expected: Vec<Expected>,
        sqs_sdk: &aws_config::SdkConfig,
        sfn: &aws_sdk_sfn::Client,
        max_receive_count: u32,
        visibility_timeout_seconds: u32,
    ) -> Result<Deployment, String> {
        let resource = format!("{RESOURCE_PREFIX}-{name}");
        // `provision` also creates a state machine on the SQS moto; the one used is on the other.
        let stack = moto::provision(sqs_sdk, &resource, max_receive_count, visibility_timeout_seconds).await?;
        let state_machine_arn = moto::create_state_machine(sfn, &resource).await?;
        Ok(Deployment {
            name: name.to_string(),
            expected,
            queue_url: stack.queue_url,
            dlq_url: stack.dlq_url,
            state_machine_arn,
            invoke_port: 0,
            watch: None,
            emf: Arc::default(),
            done: Arc::default(),
            starters: Vec::new(),
            readers: Vec::new(),
            esm: None,
            producer: None,
            producer_exit: None,
            feeder: None,
            feed: Arc::default(),
        })
    }

    /// Its function's name (`AWS_LAMBDA_FUNCTION_NAME`, the EMF dimension). On its Runtime API
    /// it is [`FUNCTION_NAME`], the binary's: cargo lambda routes only the workspace's binaries.
    pub fn function_name(&self) -> String {
        format!("starter-{}", self.name)
    }

    /// The environment of its function (besides the AWS endpoints and credentials).
    pub fn function_env(&self, settings: &FunctionSettings) -> Vec<(&'static str, String)> {
        let mut env = crate::run::function_env(
            &self.state_machine_arn,
            &self.dlq_url,
            settings.rate,
            settings.burst,
            settings.instances,
        );
        env.push(("MESSAGES_PER_EXECUTION", settings.messages_per_execution.to_string()));
        if let Some(c) = &settings.coordination {
            env.push(("COORDINATION_TABLE", c.table.clone()));
            env.push(("QUOTA_KEY", c.quota_key.clone()));
            env.push(("AWS_ENDPOINT_URL_DYNAMODB", c.endpoint.clone()));
        }
        env.extend(settings.cap.iter().flat_map(crate::cap::CapSettings::env));
        env
    }

    /// Starts its Runtime API and its starters, and waits until the function answers.
    pub async fn start_function(&mut self, site: &Site<'_>, settings: &FunctionSettings) -> Result<(), String> {
        self.start_runtime_api(site).await?;
        self.spawn_starters(site, settings)?;
        let owners: Vec<Handle> = self.function().cloned().collect();
        warm_up(self.invoke_port, FUNCTION_NAME, Duration::from_secs(30), &owners)
            .await
            .map_err(|e| {
                format!(
                    "deployment {}: {e}; see the logs in {}",
                    self.name,
                    site.run_dir.display()
                )
            })
    }

    /// Starts its `cargo lambda watch --only-lambda-apis` on a free port.
    async fn start_runtime_api(&mut self, site: &Site<'_>) -> Result<(), String> {
        let cargo_lambda = paths::cargo_lambda()?;
        let port = moto::free_port().map_err(|e| format!("no free port: {e}"))?;
        let name = format!("cargo-lambda-watch-{}", self.name);
        let log = site.log(&format!("{name}.log"));
        let mut command = Command::new(&cargo_lambda);
        command
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
            ])
            .arg(port.to_string())
            .current_dir(paths::workspace_root());
        log_to(&mut command, &log)?;
        let (watch, _) = site.spawn(&name, command, &cargo_lambda)?;
        self.watch = Some(watch.clone());
        self.invoke_port = port;
        moto::wait_for_port(port, Duration::from_secs(60), &watch, &format!("see {}", log.display())).await
    }

    /// Starts its `settings.instances` starter processes on the Runtime API, their stdout
    /// read for the EMF lines.
    fn spawn_starters(&mut self, site: &Site<'_>, settings: &FunctionSettings) -> Result<(), String> {
        let function = self.function_name();
        for i in 1..=settings.instances {
            let name = format!("{function}-{i}");
            let path = site.log(&format!("{name}.log"));
            let mut command = Command::new(&site.bins.starter);
            aws_env(&mut command, site.endpoints);
            command
                .envs(self.function_env(settings))
                .env("AWS_LAMBDA_FUNCTION_NAME", &function)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
                .env(
                    "AWS_LAMBDA_RUNTIME_API",
                    format!("http://127.0.0.1:{}/.rt/{FUNCTION_NAME}", self.invoke_port),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(moto::log_file(&path)?);
            let (handle, pipes) = site.spawn(&name, command, &site.bins.starter)?;
            if let Some(stdout) = pipes.stdout {
                let emf = Arc::clone(&self.emf);
                let done = Arc::clone(&self.done);
                self.readers.push(capture_stdout(stdout, path, emf, done, site.t0));
            }
            self.starters.push(handle);
        }
        Ok(())
    }

    /// Starts its local-esm: its queue to its function, `instances` batches at a time.
    pub fn spawn_esm(
        &mut self,
        site: &Site<'_>,
        batch_size: u16,
        instances: u32,
        max_seconds: f64,
    ) -> Result<(), String> {
        let name = format!("local-esm-{}", self.name);
        let mut command = Command::new(&site.bins.local_esm);
        aws_env(&mut command, site.endpoints);
        command
            .args(["--queue-url", &self.queue_url, "--function-name", FUNCTION_NAME])
            .args([
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
                &self.invoke_port.to_string(),
            ])
            .args([
                "--batch-size",
                &batch_size.to_string(),
                "--max-concurrency",
                &instances.to_string(),
            ])
            .args(["--function-timeout", &FUNCTION_TIMEOUT_SECONDS.to_string()])
            // Short polls: the SQS moto serves one request at a time, so a long poll would
            // stall every other call.
            .args(["--wait-seconds", "0", "--progress-seconds", "0", "--summary-json"])
            .args(["--max-seconds", &(max_seconds + 60.0).to_string()])
            .args(["--endpoint-url", &site.endpoints.sqs, "--region", REGION]);
        if batch_size > 10 {
            command.args(["--batching-window", "1"]);
        }
        command
            .stdin(Stdio::null())
            .stdout(moto::log_file(&site.log(&format!("{name}.out")))?)
            .stderr(moto::log_file(&site.log(&format!("{name}.log")))?);
        self.esm = Some(site.spawn(&name, command, &site.bins.local_esm)?.0);
        Ok(())
    }

    /// Starts its producer and feeds it its messages at `produce_rate`, held back while more
    /// than `max_queue_depth` are outstanding (see `feed`).
    pub fn spawn_producer(&mut self, site: &Site<'_>, produce_rate: f64, max_queue_depth: u64) -> Result<(), String> {
        let name = format!("producer-{}", self.name);
        let mut command = Command::new(&site.bins.producer);
        aws_env(&mut command, site.endpoints);
        command
            .args(["--queue-url", &self.queue_url, "--stdin", "--quiet", "--summary-json"])
            .args(["--endpoint-url", &site.endpoints.sqs, "--region", REGION])
            .stdin(Stdio::piped())
            .stdout(moto::log_file(&site.log(&format!("{name}.out")))?)
            .stderr(moto::log_file(&site.log(&format!("{name}.log")))?);
        let (producer, pipes) = site.spawn(&name, command, &site.bins.producer)?;
        let stdin = pipes.stdin.ok_or("the producer's stdin is not a pipe")?;
        self.feeder = Some(feed::spawn(
            stdin,
            self.expected.iter().map(|e| e.body.clone()).collect(),
            Feeder::new(produce_rate, max_queue_depth),
            Arc::clone(&self.done),
            Arc::clone(&self.feed),
        ));
        self.producer = Some(producer);
        Ok(())
    }

    /// Its function: the starters and their Runtime API.
    pub fn function(&self) -> impl Iterator<Item = &Handle> {
        self.starters.iter().chain(self.watch.iter())
    }

    /// The processes that must keep running until the queues drain.
    pub fn must_run(&self) -> impl Iterator<Item = &Handle> {
        self.function().chain(self.esm.iter())
    }

    /// Notes whether its producer has ended; `Some` the first time it is seen ended.
    pub fn note_producer_exit(&mut self) -> Option<Exit> {
        if self.producer_exit.is_some() {
            return None;
        }
        self.producer_exit = self.producer.as_ref().and_then(Handle::exit);
        self.producer_exit
    }

    /// Its queues and its function's starts, now.
    pub async fn read(&self, sqs: &aws_sdk_sqs::Client, now: f64) -> Reading {
        let queue = stack::queue_counts(sqs, &self.queue_url).await.ok();
        let dlq = stack::queue_counts(sqs, &self.dlq_url).await.ok().map(|c| c.total());
        if let Some(depth) = dlq {
            self.done.dlq_depth.store(depth, Ordering::Relaxed);
        }
        let guard = self.emf.lock().unwrap_or_else(|p| p.into_inner());
        Reading {
            queue,
            dlq,
            started: guard.totals.counts.started,
            executions: guard.totals.counts.executions,
            rate: rate::window_rate(&guard.executions, now, rate::WINDOW_SECONDS),
            message_rate: rate::window_rate(&guard.starts, now, rate::WINDOW_SECONDS),
        }
    }

    /// The state of its feed.
    pub fn fed(&self) -> FeedState {
        self.feed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops feeding its producer.
    pub fn stop_feeding(&mut self) {
        if let Some(feeder) = self.feeder.take() {
            feeder.abort();
        }
    }

    /// Its event source mapping and producer, to stop before the function.
    pub fn mapping(&self) -> impl Iterator<Item = &Handle> {
        self.esm.iter().chain(self.producer.iter())
    }

    /// Waits (a little) for its starters' last EMF lines, once they are stopped.
    pub async fn drain_stdout(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
    }

    /// Reads its executions (with start times) and DLQ in moto, and accounts for its messages,
    /// carried by executions of `shape`.
    pub async fn find(
        &self,
        sqs: &aws_sdk_sqs::Client,
        sfn: &aws_sdk_sfn::Client,
        shape: Shape,
    ) -> Result<Found, String> {
        let listed = moto::list_executions(sfn, &self.state_machine_arn).await?;
        let executions = moto::describe_executions(sfn, &listed).await?;
        let dead_letters =
            stack::read_queue(sqs, &self.dlq_url, Duration::from_secs(600), Duration::from_secs(60)).await?;
        let accounting = account(&self.expected, &executions, &dead_letters, shape);
        Ok(Found { listed, accounting })
    }

    /// What it did, for the report; `drain_seconds` turns its executions and messages into
    /// rates, compared with the budget's `refill` (starts per second).
    pub fn report(&self, site: &Site<'_>, found: Found, drain_seconds: f64, refill: f64) -> DeploymentReport {
        let producer = last_json_line(&site.log(&format!("producer-{}.out", self.name)));
        let field = |name: &str| producer.as_ref().and_then(|v| v.get(name)).and_then(Value::as_u64);
        let function: FunctionTotals = self.emf.lock().unwrap_or_else(|p| p.into_inner()).totals.clone();
        let executions_in_moto = found.listed.len() as u64;
        let throughput = Throughput::new(found.accounting.carried, executions_in_moto, drain_seconds, refill);
        DeploymentReport {
            name: self.name.clone(),
            function_name: self.function_name(),
            sent: field("sent"),
            not_sent: field("failed"),
            executions_in_moto,
            accounting: found.accounting,
            function,
            achieved_rate: rate::per_second(executions_in_moto, drain_seconds),
            throughput,
            producer_held_seconds: self.fed().held_seconds,
            esm: last_json_line(&site.log(&format!("local-esm-{}.out", self.name))),
            producer,
        }
    }

    /// What went wrong with it, one sentence each (`deployment <name>: …`).
    pub fn problems(&self, site: &Site<'_>, report: &DeploymentReport) -> Vec<String> {
        let mut problems = report.accounting.problems();
        match self.producer_exit {
            Some(exit) if exit.success() => {}
            Some(exit) => problems.push(format!(
                "the producer failed ({exit}); see {}",
                site.log(&format!("producer-{}.log", self.name)).display()
            )),
            None => problems.push("the producer did not finish".to_string()),
        }
        if let Some(not) = report.not_sent.filter(|n| *n > 0) {
            problems.push(format!("{not} message(s) were not sent"));
        }
        problems
            .into_iter()
            .map(|p| format!("deployment {}: {p}", self.name))
            .collect()
    }
}

/// Copies a starter's stdout into its log and sums its EMF lines; `done` counts the messages
/// started, duplicate or dead-lettered.
fn capture_stdout(
    stdout: ChildStdout,
    log: PathBuf,
    emf_log: Arc<Mutex<EmfLog>>,
    done: Arc<Done>,
    t0: Instant,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut file = match tokio::fs::OpenOptions::new().create(true).append(true).open(&log).await {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("sfn-pacer-demo: cannot write {}: {e}", log.display());
                None
            }
        };
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(sample) = emf::parse_line(&line) {
                done.by_function.fetch_add(
                    sample.started + sample.duplicates + sample.dead_lettered,
                    Ordering::Relaxed,
                );
                done.dead_lettered.fetch_add(sample.dead_lettered, Ordering::Relaxed);
                let mut guard = emf_log.lock().unwrap_or_else(|p| p.into_inner());
                guard.record(t0.elapsed().as_secs_f64(), &sample);
            }
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(line.as_bytes()).await;
                let _ = f.write_all(b"\n").await;
            }
        }
        if let Some(f) = file.as_mut() {
            let _ = f.flush().await;
        }
    })
}

/// The last JSON line of a file (a child's `--summary-json` output).
fn last_json_line(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(i: usize) -> Expected {
        Expected {
            id: format!("m{i}"),
            good: !i.is_multiple_of(3),
            body: String::new(),
        }
    }

    #[test]
    fn messages_are_dealt_in_turn() {
        let hands = deal((0..5).map(message).collect(), 2);
        let ids: Vec<Vec<&str>> = hands
            .iter()
            .map(|h| h.iter().map(|e| e.id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["m0", "m2", "m4"], vec!["m1", "m3"]]);
        assert_eq!(deal((0..3).map(message).collect(), 1)[0].len(), 3);
        assert_eq!(names(2), vec!["a", "b"]);
        assert_eq!(names(1), vec!["a"]);
    }
}
