//! The demo's cap on running executions (`--max-running`): every deployment's function gets
//! `MAX_RUNNING_EXECUTIONS` under one `RUNNING_KEY` (the deployments share the cap). The local
//! stack ends each execution after `--execution-seconds` (moto's StopExecution: its executions
//! otherwise run for ever) and delivers its status change event to the release function (the same
//! library, in this process) as EventBridge would: up to a second late, and with `--event-faults`
//! some twice and some never (their slots come back by the reclaim, scheduled every 10 s here, a
//! minute on AWS). The report: the peak of running executions from moto's own start and stop times
//! against the cap, the throughput against Little's law's bound cap / duration, the slots held at
//! the end.

use std::sync::Arc;
use std::time::Duration;

use local_stack::events::end_executions_older_than;
use local_stack::executions::{peak_running, schedule, Delivered, EventBridge, EventFaults};
use local_stack::moto::list_executions;
use serde::Serialize;
use sfn_pacer::aws::dynamo::DynamoStore;
use sfn_pacer::aws::{SfnStarter, SqsQueue};
use sfn_pacer::start::running::RunningStore;
use sfn_pacer::{Config, Starter};
use tokio::task::JoinHandle;

/// The cap's key, the same for every deployment.
pub const RUNNING_KEY: &str = "sfn-pacer-demo";
/// `RUNNING_EXPIRY_SECONDS`: a slot whose event was lost is looked at within half a minute.
pub const EXPIRY_SECONDS: u64 = 30;
/// The reclaim's schedule here (a minute in the template).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How often the local stack looks for executions to end.
const END_POLL: Duration = Duration::from_millis(250);
/// How long, after the queues drained, the last executions may take to end and be released.
const SETTLE: Duration = Duration::from_secs(120);

/// `--max-running` and what goes with it.
#[derive(Clone, Copy, Debug)]
pub struct CapSettings {
    /// The cap.
    pub max_running: u32,
    /// How long each execution runs.
    pub execution_seconds: f64,
    /// Whether EventBridge drops and duplicates some events.
    pub event_faults: bool,
}

impl CapSettings {
    /// The function's variables of the cap.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MAX_RUNNING_EXECUTIONS", self.max_running.to_string()),
            ("RUNNING_KEY", RUNNING_KEY.to_string()),
            ("RUNNING_EXPIRY_SECONDS", EXPIRY_SECONDS.to_string()),
        ]
    }

    /// EventBridge's delivery: up to a second late; with `--event-faults`, 5 % dropped, 10 % twice,
    /// up to 2 s late.
    pub fn faults(&self) -> EventFaults {
        match self.event_faults {
            true => EventFaults {
                drop: 0.05,
                duplicate: 0.10,
                late: Duration::from_secs(2),
            },
            false => EventFaults {
                late: Duration::from_secs(1),
                ..EventFaults::default()
            },
        }
    }
}

/// What the cap did in the run.
#[derive(Clone, Debug, Serialize)]
pub struct CapReport {
    /// The cap.
    pub cap: u32,
    /// The most executions that ran at once (moto's start and stop times).
    pub peak: usize,
    /// Executions, and their mean duration (seconds).
    pub executions: usize,
    /// Their mean duration, seconds.
    pub mean_seconds: f64,
    /// Executions started per second over the drain.
    pub throughput: f64,
    /// Little's law's bound: cap / mean duration, per second.
    pub bound: f64,
    /// Slots held at the end.
    pub held_at_end: u64,
    /// Status change events sent, dropped, sent twice; deliveries that freed a slot, freed nothing.
    pub events: (u64, u64, u64, u64, u64),
}

impl CapReport {
    /// Its problems, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.peak > self.cap as usize {
            out.push(format!(
                "{} executions ran at once, over the cap of {}",
                self.peak, self.cap
            ));
        }
        if self.held_at_end > 0 {
            out.push(format!("{} running slots still held at the end", self.held_at_end));
        }
        out
    }
}

/// The release side of the run: the release function, EventBridge, the ender and the schedule.
pub struct Releases {
    settings: CapSettings,
    bridge: Arc<EventBridge>,
    store: DynamoStore,
    sfn: aws_sdk_sfn::Client,
    machines: Vec<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Releases {
    /// Starts them for the state machines `machines`: the release function is configured as the
    /// first deployment's (every deployment's events go to it: the cap is one).
    pub async fn start(
        settings: CapSettings,
        function_env: Vec<(&'static str, String)>,
        sfn_sdk: &aws_config::SdkConfig,
        dynamodb_sdk: &aws_config::SdkConfig,
        machines: Vec<String>,
        seed: u64,
    ) -> Result<Releases, String> {
        let config = Config::from_lookup(|k| function_env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .map_err(|e| format!("the release function's configuration: {e}"))?;
        let table = config
            .coordination_table
            .clone()
            .ok_or("--max-running needs the coordination table")?;
        let sfn_starter = Arc::new(SfnStarter::new(sfn_sdk, config.call_timeout));
        let store = Arc::new(DynamoStore::new(dynamodb_sdk, &table, config.call_timeout));
        let queue = Arc::new(SqsQueue::new(sfn_sdk, config.call_timeout));
        let release = Arc::new(Starter::new(config, sfn_starter.clone(), queue).with_cap(
            store.clone(),
            sfn_starter,
            store.clone(),
        ));
        let bridge = EventBridge::new(release.clone(), settings.faults(), seed);
        let sfn = aws_sdk_sfn::Client::new(sfn_sdk);
        let ender = {
            let (bridge, sfn, machines) = (bridge.clone(), sfn.clone(), machines.clone());
            let duration = Duration::from_secs_f64(settings.execution_seconds);
            tokio::spawn(async move {
                loop {
                    for machine in &machines {
                        match end_executions_older_than(&sfn, machine, duration).await {
                            Ok(events) => events.into_iter().for_each(|event| bridge.send(event)),
                            Err(e) => eprintln!("sfn-pacer-demo: could not end executions: {e}"),
                        }
                    }
                    tokio::time::sleep(END_POLL).await;
                }
            })
        };
        Ok(Releases {
            settings,
            bridge,
            store: DynamoStore::new(dynamodb_sdk, &table, Duration::from_secs(5)),
            sfn,
            machines,
            tasks: vec![ender, schedule(release, SWEEP_EVERY)],
        })
    }

    /// Slots held, as the table counts them.
    async fn held(&self) -> u64 {
        match self.store.view(RUNNING_KEY).await {
            Ok(view) => view.map_or(0, |v| v.held()),
            Err(_) => u64::MAX,
        }
    }

    /// After the queues drained: waits (bounded) until the last executions ended and their slots
    /// came back, then stops and reports.
    pub async fn finish(self, drain_seconds: f64) -> Result<CapReport, String> {
        let settle = tokio::time::Instant::now() + SETTLE;
        while tokio::time::Instant::now() < settle && (self.bridge.pending() > 0 || self.held().await > 0) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        let mut intervals = Vec::new();
        for machine in &self.machines {
            let listed = list_executions(&self.sfn, machine).await?;
            intervals.extend(listed.iter().map(|l| (l.started_at, l.stopped_at.unwrap_or(f64::MAX))));
        }
        let ended: Vec<f64> = intervals
            .iter()
            .filter(|(_, e)| *e < f64::MAX)
            .map(|(s, e)| e - s)
            .collect();
        let mean_seconds = ended.iter().sum::<f64>() / ended.len().max(1) as f64;
        let Delivered {
            events,
            dropped,
            duplicated,
            freed,
            duplicates,
            ..
        } = self.bridge.delivered();
        Ok(CapReport {
            cap: self.settings.max_running,
            peak: peak_running(&intervals),
            executions: intervals.len(),
            mean_seconds,
            throughput: intervals.len() as f64 / drain_seconds.max(1e-9),
            bound: f64::from(self.settings.max_running) / mean_seconds.max(1e-9),
            held_at_end: self.held().await,
            events: (events, dropped, duplicated, freed, duplicates),
        })
    }
}

/// The report's lines of the cap: (label, text).
pub fn render(r: &CapReport) -> Vec<(&'static str, String)> {
    let (events, dropped, duplicated, freed, duplicates) = r.events;
    vec![
        (
            "running cap",
            format!(
                "peak {} running at once (from moto's start and stop times) <= cap {}: {}",
                r.peak,
                r.cap,
                if r.peak <= r.cap as usize { "within" } else { "OVER" }
            ),
        ),
        (
            "cap throughput",
            format!(
                "{} executions in {:.1}/s vs Little's law's bound cap / duration = {} / {:.2} s = {:.1}/s ({:.0} %)",
                r.executions,
                r.throughput,
                r.cap,
                r.mean_seconds,
                r.bound,
                100.0 * r.throughput / r.bound.max(1e-9)
            ),
        ),
        (
            "releases",
            format!(
                "{events} status change events ({dropped} dropped, {duplicated} sent twice): {freed} freed a slot, \
                 {duplicates} freed nothing; the reclaim freed the rest; slots held at the end: {}",
                r.held_at_end
            ),
        ),
    ]
}
