//! The handler: one SQS batch in, one partial batch response out.
//!
//! Invariants:
//! - every record ends in exactly one [`Disposition`]; only [`Disposition::Retry`] records
//!   are listed in `batchItemFailures`, each id once, and only ids of this batch;
//! - a per-message problem is never a handler error (that would fail the whole batch);
//! - no call starts after the cutoff (`deadline − DEADLINE_MARGIN_MS`);
//! - records that map to the same execution name are one start (no duplicate within a batch);
//! - batch mode (`MESSAGES_PER_EXECUTION` > 1, [`crate::plan::batch`]): on Standard, no execution
//!   starts before every message it carries is claimed for it ([`crate::start::claim`]);
//! - FIFO: within a message group, one start at a time and in order; after a failure, the
//!   rest of the group is reported without being tried. Groups run concurrently.
//! - with the cap (`MAX_RUNNING_EXECUTIONS`): no call starts without its execution's running
//!   slot, taken right before it ([`cap_phase`]); a unit that finds none waits at the cap.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use futures::stream::{self, StreamExt};
use lambda_runtime::LambdaEvent;
use tokio::time::{sleep, timeout, Instant};

use crate::close::backoff::{retry_wait, unit_random};
use crate::close::queue::Queue;
pub use crate::close::Disposition;
use crate::close::{distinct, Closing, Comeback, Settled};
use crate::config::{Config, WorkflowType};
use crate::metrics::{Count, Report, Tally};
use crate::plan::claim_check::{check_in, ObjectStore, INPUT_PREFIX};
use crate::plan::event::{messages, EventError, Message};
use crate::plan::{plan, Plan, Rejection, MAX_INPUT_BYTES};
use crate::start::budget::lease::SharedPacer;
use crate::start::budget::{rules, BudgetState, Store};
use crate::start::claim::ClaimStore;
use crate::start::classify::{classify, systemic_advice, Class};
use crate::start::clock::Clock;
use crate::start::pace::Pacer;
use crate::start::pace::Slot;
use crate::start::pacing::Pacing;
use crate::start::running::cap::REFRESH;
use crate::start::{StartError, StartExecution, StartRequest, Started};

/// The result of one batch.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The partial batch response to return.
    pub response: SqsBatchResponse,
    /// The counts for the summary line and the metrics.
    pub report: Report,
    /// One disposition per record, in record order.
    pub dispositions: Vec<Disposition>,
}

/// The starter: configuration, clients and the pacer, built once per execution environment.
pub struct Starter {
    config: Config,
    sfn: Arc<dyn StartExecution>,
    queue: Arc<dyn Queue>,
    pacing: Pacing,
    /// The claim-check store (`CLAIM_CHECK_BUCKET`), if configured.
    objects: Option<Arc<dyn ObjectStore>>,
    /// The per-message claims of batch mode on Standard (the coordination table).
    claims: Option<Arc<dyn ClaimStore>>,
    /// The cap on running executions (`MAX_RUNNING_EXECUTIONS`), if any.
    running: Option<Running>,
}

/// Records that start one execution: one message (several records when they share its name),
/// or in batch mode a group of messages; or records settled before the start phase (a
/// rejected message, a group that could not be claimed).
struct Unit {
    /// Record indices, in record order.
    members: Vec<usize>,
    /// The distinct messages the execution carries from this batch: 1 in single mode.
    carried: u64,
    work: Work,
}

/// What the start phase does with a unit.
enum Work {
    /// Start this execution.
    Start(Plan),
    /// Nothing: it is settled already.
    Settled(Settled),
}

/// What the attempts at one start came to.
enum Attempt {
    Started,
    Duplicate,
    Permanent(Rejection),
    /// Not started; `comeback` says when it is delivered again.
    Retry {
        reason: String,
        comeback: Comeback,
    },
}

/// The state of one invocation.
struct Invocation<'a> {
    starter: &'a Starter,
    messages: &'a [Message],
    cutoff: Instant,
    /// The StartExecution timeout of this invocation (see [`Times`]).
    call_timeout: Duration,
    tally: Tally,
    systemic: Mutex<Option<String>>,
    /// Units whose start is not settled yet.
    pending: AtomicU64,
    /// Units holding a slot (waiting for its time, or in their StartExecution call).
    holding: AtomicU64,
}

/// Why a unit was reported untried at the cutoff (the logs' and the disposition's reason).
const DEADLINE_REASON: &str = "deadline: no time left to start";

/// Time kept after the close phase for the runtime to post the response.
pub const RESPONSE_RESERVE: Duration = Duration::from_millis(100);
/// Below this much time to start anything, the invocation says which setting to change.
pub const MIN_START_WINDOW: Duration = Duration::from_millis(100);

/// The time plan of one invocation. The deadline margin fits the budget: it is
/// `min(DEADLINE_MARGIN_MS, budget / 2)`, so a short function timeout still starts for half of
/// it; the StartExecution timeout shrinks in proportion, so a call started at the cutoff ends
/// within the margin, and the close phase has the rest, until `hard_deadline`.
#[derive(Debug, Clone, Copy)]
struct Times {
    cutoff: Instant,
    call_timeout: Duration,
    hard_deadline: Instant,
}

impl Times {
    fn new(config: &Config, started_at: Instant, budget: Duration) -> Times {
        let margin = config.deadline_margin.min(budget / 2);
        let scale = margin.as_secs_f64() / config.deadline_margin.as_secs_f64().max(f64::MIN_POSITIVE);
        let start_window = budget.saturating_sub(margin);
        if start_window < MIN_START_WINDOW {
            tracing::error!(
                budget_ms = budget.as_millis() as u64,
                "too little time left in this invocation to start anything: raise the function's timeout \
                 (and keep DEADLINE_MARGIN_MS well below it); every message is reported for retry"
            );
        }
        Times {
            cutoff: started_at + start_window,
            call_timeout: config.call_timeout.mul_f64(scale.clamp(0.0, 1.0)),
            hard_deadline: started_at + budget.saturating_sub(RESPONSE_RESERVE),
        }
    }
}

/// Deadlines before this (epoch milliseconds, 2000-01-01) are not real ones: `cargo lambda
/// watch` sends a fixed deadline in 1970.
const FIRST_REAL_DEADLINE_MS: u64 = 946_684_800_000;

/// The time this invocation may use, from the Lambda deadline (epoch milliseconds). A
/// 1970-style deadline is unknown: then the configured local budget applies. A real deadline
/// already past leaves no time: nothing starts, everything is reported.
pub fn time_budget(deadline_epoch_ms: u64, now_epoch_ms: u64, local_budget: Duration) -> Duration {
    if deadline_epoch_ms > now_epoch_ms {
        Duration::from_millis(deadline_epoch_ms - now_epoch_ms)
    } else if deadline_epoch_ms < FIRST_REAL_DEADLINE_MS {
        local_budget
    } else {
        Duration::ZERO
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Starter {
    /// Builds the starter; the pacer gets this instance's share of the budget (static split).
    pub fn new(config: Config, sfn: Arc<dyn StartExecution>, queue: Arc<dyn Queue>) -> Starter {
        let pacing = Pacing::Local(Self::static_split(&config));
        Starter {
            config,
            sfn,
            queue,
            pacing,
            objects: None,
            claims: None,
            running: None,
        }
    }

    /// Batch mode on Standard: claims each message for its execution in `claims` (the
    /// coordination table) before starting it (see [`crate::start::claim`]).
    pub fn with_claims(mut self, claims: Arc<dyn ClaimStore>) -> Starter {
        self.claims = Some(claims);
        self
    }

    /// Stores inputs too large for StartExecution, and dead letters too large for SQS, in
    /// `CLAIM_CHECK_BUCKET` through `objects` (see [`crate::plan::claim_check`]).
    pub fn with_claim_check(mut self, objects: Arc<dyn ObjectStore>) -> Starter {
        self.objects = Some(objects);
        self
    }

    /// Builds the starter in coordinated mode: it leases from the budget `config.quota_key` in
    /// `store` (created from `STARTS_PER_SECOND` and `STARTS_BURST` if absent), and falls back
    /// to the static split while the table cannot be used.
    pub fn coordinated(
        config: Config,
        sfn: Arc<dyn StartExecution>,
        queue: Arc<dyn Queue>,
        store: Arc<dyn Store>,
    ) -> Starter {
        let seed = BudgetState::new(config.starts_per_second, config.starts_burst);
        let shared = SharedPacer::new(
            store,
            &config.quota_key,
            seed,
            Self::static_split(&config),
            config.call_timeout,
        );
        Starter {
            config,
            sfn,
            queue,
            pacing: Pacing::Shared(Box::new(shared)),
            objects: None,
            claims: None,
            running: None,
        }
    }

    /// The shared pacer and the cap read the time from `clock` (tests and benchmarks model
    /// clock skew, thawed instances and simulated time with it); by default, the system's.
    pub fn with_clock(mut self, clock: Clock) -> Starter {
        self.pacing = match self.pacing {
            Pacing::Shared(shared) => Pacing::Shared(Box::new(shared.with_clock(clock.clone()))),
            local => local,
        };
        self.running = self.running.map(|running| running.with_clock(clock));
        self
    }

    fn static_split(config: &Config) -> Pacer {
        Pacer::new(
            config.instance_rate_per_second(),
            config.instance_burst(),
            Instant::now(),
        )
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The local pacer shared by every invocation of this instance (in coordinated mode, the
    /// static split it falls back to).
    pub fn pacer(&self) -> &Pacer {
        self.pacing.local()
    }

    /// How this instance paces.
    pub fn pacing(&self) -> &Pacing {
        &self.pacing
    }

    /// The Lambda entry point: processes the batch, logs the summary, prints the EMF metrics.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let function_name = event.context.env_config.function_name.clone();
        let outcome = self
            .process(event.payload, event.context.deadline)
            .await
            .inspect_err(|e| {
                tracing::error!(error = %e, "the event is not an SQS batch: failing the invocation");
            })?;
        outcome.report.log();
        println!(
            "{}",
            outcome
                .report
                .emf(&self.config.metrics_namespace, &function_name, now_epoch_ms())
        );
        Ok(outcome.response)
    }

    /// Processes one batch, in phases: plan (names, inputs, merged records; in batch mode,
    /// groups and their claims) → start (paced, retried within the invocation) → close (dead
    /// letters and visibility changes, batched, with the time left). Errs only when the event
    /// is not an SQS batch.
    pub async fn process(&self, event: SqsEvent, deadline_epoch_ms: u64) -> Result<Outcome, EventError> {
        let started_at = Instant::now();
        let messages = messages(event)?;
        let budget = time_budget(deadline_epoch_ms, now_epoch_ms(), self.config.local_deadline);
        let times = Times::new(&self.config, started_at, budget);
        let fifo = messages.iter().any(Message::from_fifo_queue);
        let units = self.units(&messages, fifo);
        let invocation = Invocation {
            starter: self,
            messages: &messages,
            cutoff: times.cutoff,
            call_timeout: times.call_timeout,
            tally: Tally::default(),
            systemic: Mutex::new(None),
            pending: AtomicU64::new(0),
            holding: AtomicU64::new(0),
        };
        let mut units = match self.config.batching() {
            true => invocation.batch(units, fifo).await,
            false => units,
        };
        if self.running.is_some() && !fifo {
            // Messages that come back to the cap's line try first.
            units.sort_by_key(|u| !messages[u.members[0]].is_comeback());
        }
        invocation.pending.store(units.len() as u64, Ordering::Relaxed);
        let settled = invocation.start_all(units, fifo).await;
        invocation.sweep_if_full(&settled).await;
        let closing = Closing {
            queue: self.queue.as_ref(),
            objects: self.objects.as_deref(),
            config: &self.config,
            messages: &messages,
            hard_deadline: times.hard_deadline,
            cap: self.running.as_ref().map(Running::cap),
        };
        let closed = closing.close(settled).await;
        self.close_pacing(times.hard_deadline).await;
        let tally = &invocation.tally;
        tally.add_many(Count::DeadLettered, closed.dead_lettered);
        tally.add_many(Count::Deferred, closed.deferred);
        tally.add_many(Count::WaitingForSlot, closed.waiting);
        tally.add_many(Count::Resent, closed.resent);
        let response = respond(&messages, &closed.dispositions);
        let mut report = tally.report(messages.len(), response.batch_item_failures.len(), started_at.elapsed());
        report.running = self.running.as_ref().and_then(|r| r.cap().running());
        report.running_cap = self.running.as_ref().and_then(|r| r.cap().size());
        self.add_pacing_counts(&mut report).await;
        Ok(Outcome {
            response,
            report,
            dispositions: closed.dispositions,
        })
    }

    /// Coordinated mode, after the close phase: gives back the unused slots of the last lease
    /// with the time that is left ([`rules::give_back_latest`]).
    async fn close_pacing(&self, deadline: Instant) {
        if let Pacing::Shared(shared) = &self.pacing {
            let latest = rules::give_back_latest(Instant::now(), self.config.call_timeout, deadline);
            shared.give_back(latest).await;
        }
    }

    /// Coordinated mode: the table calls, fallbacks and the shared rate, into the report; one
    /// warning per invocation that fell back.
    async fn add_pacing_counts(&self, report: &mut Report) {
        let Pacing::Shared(shared) = &self.pacing else {
            return;
        };
        let counts = shared.take_counts();
        report.lease_calls = counts.calls;
        report.fallbacks = counts.fallbacks;
        report.lease_slots_dropped = counts.dropped;
        report.budget_reshards = counts.reshards;
        report.lease_latencies_ms = counts.latencies_ms;
        let budget = shared.budget().await;
        report.shared_rate_per_second = budget.as_ref().map_or(0.0, |b| b.budget_rate());
        if counts.reshards > 0 {
            tracing::info!(
                quota_key = %self.config.quota_key,
                items = budget.map_or(1, |b| b.shards),
                "the shared budget was spread over another number of items, as its load called for"
            );
        }
        if counts.fallbacks > 0 {
            tracing::warn!(
                table = self.config.coordination_table.as_deref().unwrap_or_default(),
                quota_key = %self.config.quota_key,
                error = shared.last_error().unwrap_or_default(),
                slots = counts.fallbacks,
                "the coordination table could not be used: paced at the static split (STARTS_PER_SECOND / MAX_CONCURRENCY) meanwhile"
            );
        }
    }

    /// Plans every record and merges records that start the same execution. FIFO merges
    /// only within a message group, so groups stay independent.
    fn units(&self, messages: &[Message], fifo: bool) -> Vec<Unit> {
        let mut units: Vec<Unit> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (i, message) in messages.iter().enumerate() {
            let work = plan(message, &self.config);
            let identity = match &work {
                Ok(Plan { name: Some(name), .. }) => format!("name\0{name}"),
                _ => format!("id\0{}", message.id),
            };
            let group = if fifo {
                message.group_id().unwrap_or_default()
            } else {
                ""
            };
            let key = format!("{group}\0{identity}");
            match by_key.get(&key) {
                Some(&u) => {
                    warn_if_inputs_differ(&units[u], &work, &messages[units[u].members[0]], message);
                    units[u].members.push(i);
                }
                None => {
                    by_key.insert(key, units.len());
                    let work = match work {
                        Ok(plan) => Work::Start(plan),
                        Err(rejection) => Work::Settled(Settled::Reject(rejection)),
                    };
                    units.push(Unit {
                        members: vec![i],
                        carried: 1,
                        work,
                    });
                }
            }
        }
        units
    }
}

impl Invocation<'_> {
    fn config(&self) -> &Config {
        &self.starter.config
    }

    /// The start phase: every unit, up to `MAX_IN_FLIGHT` at once (FIFO: see [`Self::run_fifo`]).
    async fn start_all(&self, units: Vec<Unit>, fifo: bool) -> Vec<(Vec<usize>, Settled)> {
        if fifo {
            return self.run_fifo(units).await;
        }
        stream::iter(units)
            .map(|unit| async move {
                let settled = self.process_unit(&unit).await;
                (unit.members, settled)
            })
            .buffer_unordered(self.config().max_in_flight)
            .collect()
            .await
    }

    /// FIFO: groups concurrently, each group's units one at a time, in order. A unit that is
    /// not acknowledged now (reported, or bound for the DLQ) stops its group: the rest is
    /// reported untried, so the group's order holds whatever the close phase achieves.
    async fn run_fifo(&self, units: Vec<Unit>) -> Vec<(Vec<usize>, Settled)> {
        let mut groups: Vec<Vec<Unit>> = Vec::new();
        let mut group_index: HashMap<String, usize> = HashMap::new();
        for unit in units {
            let group = self.messages[unit.members[0]]
                .group_id()
                .unwrap_or_default()
                .to_string();
            let g = *group_index.entry(group).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(unit);
        }
        let per_group: Vec<Vec<(Vec<usize>, Settled)>> = stream::iter(groups)
            .map(|group| async move {
                let mut out = Vec::with_capacity(group.len());
                let mut stopped = false;
                for unit in group {
                    let settled = if stopped {
                        self.pending.fetch_sub(1, Ordering::Relaxed);
                        Settled::Retry {
                            reason: "an earlier message of its FIFO group was not started".to_string(),
                            comeback: Comeback::Now,
                        }
                    } else {
                        self.process_unit(&unit).await
                    };
                    stopped = !matches!(settled, Settled::Done(_));
                    out.push((unit.members, settled));
                }
                out
            })
            .buffer_unordered(self.config().max_in_flight)
            .collect()
            .await;
        per_group.into_iter().flatten().collect()
    }

    /// Settles one unit; the records of a started unit beyond the messages it carries count as
    /// merged.
    async fn process_unit(&self, unit: &Unit) -> Settled {
        let settled = match &unit.work {
            Work::Start(plan) => match self.waits_in_line(unit) {
                Some(waits) => waits.into(),
                None => {
                    let hold = self.hold_until(unit);
                    let settled: Settled = self.start(plan, unit.carried, hold).await.into();
                    if matches!(settled, Settled::Done(_)) {
                        self.confirm_started(plan).await;
                    }
                    settled
                }
            },
            Work::Settled(settled) => settled.clone(),
        };
        self.pending.fetch_sub(1, Ordering::Relaxed);
        if matches!(settled, Settled::Done(_)) {
            let records = distinct(self.messages, &unit.members).len() as u64;
            self.tally.add_many(Count::Merged, records.saturating_sub(unit.carried));
        }
        settled
    }

    /// Starts one execution carrying `carried` messages, pacing every attempt and retrying
    /// within the invocation while attempts and time remain; at a full cap, waiting for a running
    /// slot until `hold` (if given), the start slot given back meanwhile.
    async fn start(&self, plan: &Plan, carried: u64, hold: Option<Instant>) -> Attempt {
        let config = self.config();
        let pacing = &self.starter.pacing;
        let input = match self.claim_checked(&plan.input).await {
            Ok(input) => input,
            Err(attempt) => return attempt,
        };
        let request = StartRequest {
            state_machine_arn: config.state_machine_arn.clone(),
            name: plan.name.clone(),
            input,
            trace_header: plan.trace_header.clone(),
        };
        let name = plan.name.as_deref().unwrap_or("(AWS-assigned)");
        let mut unconfirmed = false;
        // This invocation holds the execution's running slot from an attempt whose answer was lost.
        let mut kept = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(reason) = self.systemic_failure() {
                return Attempt::Retry {
                    reason,
                    comeback: Comeback::Backoff,
                };
            }
            // The demand that sizes a shared lease: units that still need a slot, not those
            // already holding one (read when the lease is planned).
            let demand = || {
                let holding = self.holding.load(Ordering::Relaxed);
                self.pending.load(Ordering::Relaxed).saturating_sub(holding).max(1)
            };
            let slot = match Instant::now() < self.cutoff {
                true => pacing.reserve(self.cutoff, demand).await,
                false => None,
            };
            let Some(slot) = slot else {
                return self.deferred().await;
            };
            self.holding.fetch_add(1, Ordering::Relaxed);
            if !slot.wait.is_zero() {
                self.tally.add_pacing_delay(slot.wait);
            }
            if !pacing.ready(slot).await {
                // Woken past the slot's grace: it is dropped, never used late; not an attempt.
                self.holding.fetch_sub(1, Ordering::Relaxed);
                attempt -= 1;
                continue;
            }
            let running = match self.gate(plan.name.as_deref(), kept).await {
                Gate::Go(running) => running,
                Gate::Stop(settled) => {
                    self.holding.fetch_sub(1, Ordering::Relaxed);
                    pacing.put_back(slot).await;
                    return settled;
                }
                Gate::Full(settled) => {
                    self.holding.fetch_sub(1, Ordering::Relaxed);
                    pacing.put_back(slot).await;
                    match hold.filter(|until| Instant::now() + REFRESH < *until) {
                        Some(_) => {
                            // Not an attempt at StartExecution: the cap is read again, then tried.
                            attempt -= 1;
                            sleep(REFRESH).await;
                            continue;
                        }
                        None => return settled,
                    }
                }
            };
            let result = timeout(self.call_timeout, self.starter.sfn.start_execution(&request))
                .await
                .unwrap_or(Err(StartError::Timeout));
            self.holding.fetch_sub(1, Ordering::Relaxed);
            if let (Err(error), Some(running)) = (&result, running) {
                // Surely not started: the slot goes back at once; else the execution may run.
                match classify(error) == Class::Retryable && maybe_applied(error) {
                    true => kept = true,
                    false => self.give_back(running).await,
                }
            }
            let error = match self.answered(result, slot, carried, unconfirmed, name).await {
                Ok(settled) => return settled,
                Err(error) => error,
            };
            if classify(&error) == Class::Retryable {
                // The request may have been applied even though the answer was lost.
                unconfirmed |= maybe_applied(&error);
                tracing::warn!(name, attempt, error = %error, "StartExecution failed; will retry");
            }
            let reason = format!("{error} (attempt {attempt})");
            if attempt >= config.max_attempts {
                return Attempt::Retry {
                    reason,
                    comeback: Comeback::Backoff,
                };
            }
            let wait = retry_wait(attempt, unit_random());
            if Instant::now() + wait >= self.cutoff {
                return Attempt::Retry {
                    reason,
                    comeback: Comeback::Backoff,
                };
            }
            self.tally.add(Count::Retried);
            sleep(wait).await;
        }
    }

    /// What a call's answer settles: started, a duplicate, a permanent rejection or a systemic
    /// failure (the pacer told of the success); else the error to retry (a throttle: the pacer
    /// told). `unconfirmed`: an earlier attempt's answer was lost.
    async fn answered(
        &self,
        result: Result<Started, StartError>,
        slot: Slot,
        carried: u64,
        unconfirmed: bool,
        name: &str,
    ) -> Result<Attempt, StartError> {
        let pacing = &self.starter.pacing;
        let error = match result {
            Ok(started) => {
                pacing.on_success(slot).await;
                self.tally.add_many(Count::Started, carried);
                self.tally.add(Count::Executions);
                if unconfirmed && self.config().workflow_type == WorkflowType::Express {
                    self.tally.add(Count::PossibleDuplicate);
                    tracing::warn!(
                        name,
                        "started after an unconfirmed attempt: an Express execution may have started twice"
                    );
                }
                tracing::debug!(name, execution_arn = %started.execution_arn, "started");
                return Ok(Attempt::Started);
            }
            Err(error) => error,
        };
        match classify(&error) {
            Class::Duplicate => {
                pacing.on_success(slot).await;
                self.tally.add_many(Count::Duplicate, carried);
                tracing::info!(name, "execution already exists: acknowledged as a duplicate");
                Ok(Attempt::Duplicate)
            }
            Class::Permanent => {
                let code = match &error {
                    StartError::Service { code, .. } => code.clone(),
                    _ => "Rejected".to_string(),
                };
                Ok(Attempt::Permanent(Rejection::new(code, error.to_string())))
            }
            Class::Systemic => {
                let reason = self.note_systemic_failure(&error);
                Ok(Attempt::Retry {
                    reason,
                    comeback: Comeback::Backoff,
                })
            }
            Class::Throttled => {
                self.tally.add(Count::Throttled);
                pacing.on_throttle(slot).await;
                Err(error)
            }
            Class::Retryable => Err(error),
        }
    }

    /// No slot before the cutoff: reported untried, to come back when this instance expects
    /// its next slot (in full flow, about when this invocation ends: at once).
    async fn deferred(&self) -> Attempt {
        // Capped before it is added: a tiny rate's estimate (up to `Duration::MAX`) would
        // overflow the instant.
        let free_in = self.starter.pacing.free_in().await.min(self.config().retry_max);
        Attempt::Retry {
            reason: DEADLINE_REASON.to_string(),
            comeback: Comeback::At(Instant::now() + free_in),
        }
    }

    /// The input as StartExecution takes it: as is, or, over its limit, stored in the
    /// claim-check bucket and replaced by a pointer (the plan only lets it through when a bucket
    /// is configured). A failed store is retried later, with backoff.
    async fn claim_checked(&self, input: &str) -> Result<String, Attempt> {
        if input.len() <= MAX_INPUT_BYTES {
            return Ok(input.to_string());
        }
        let too_large = || {
            Attempt::Permanent(Rejection::new(
                "InputTooLarge",
                "the input is over the Step Functions limit",
            ))
        };
        let (Some(bucket), Some(objects)) = (&self.config().claim_check_bucket, &self.starter.objects) else {
            return Err(too_large());
        };
        let left = self
            .cutoff
            .saturating_duration_since(Instant::now())
            .min(self.call_timeout);
        if left.is_zero() {
            return Err(Attempt::Retry {
                reason: DEADLINE_REASON.to_string(),
                comeback: Comeback::Now,
            });
        }
        match timeout(left, check_in(objects.as_ref(), bucket, INPUT_PREFIX, input)).await {
            Ok(Ok(pointer)) => {
                tracing::debug!(object = %pointer.url(), bytes = pointer.size, "input stored in the claim-check bucket");
                Ok(pointer.to_json())
            }
            Ok(Err(e)) => Err(Attempt::Retry {
                reason: format!("could not store the input in the claim-check bucket: {e}"),
                comeback: Comeback::Backoff,
            }),
            Err(_) => Err(Attempt::Retry {
                reason: "the claim-check bucket did not answer in time".to_string(),
                comeback: Comeback::Backoff,
            }),
        }
    }

    fn systemic_failure(&self) -> Option<String> {
        self.systemic.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a failure no message can fix; the first one of the invocation is logged.
    fn note_systemic_failure(&self, error: &StartError) -> String {
        let mut systemic = self.systemic.lock().unwrap_or_else(|p| p.into_inner());
        if systemic.is_none() {
            tracing::error!(
                error = %error,
                state_machine_arn = %self.config().state_machine_arn,
                advice = systemic_advice(error),
                "StartExecution fails for every message; the batch is reported for retry"
            );
        }
        systemic.get_or_insert_with(|| error.to_string()).clone()
    }
}

/// Whether a failed StartExecution may still have started its execution (no answer, or a 5xx).
fn maybe_applied(error: &StartError) -> bool {
    matches!(
        error,
        StartError::Timeout
            | StartError::Transport(_)
            | StartError::Service {
                status: Some(500..),
                ..
            }
    )
}

/// Records merged into one execution (same name) whose payloads differ: only the first
/// one's input starts. Step Functions would refuse the others' input under that name anyway
/// (`ExecutionAlreadyExists`); the warning makes it visible.
fn warn_if_inputs_differ(unit: &Unit, work: &Result<Plan, Rejection>, first: &Message, other: &Message) {
    if let (Work::Start(kept), Ok(merged)) = (&unit.work, work) {
        if kept.input != merged.input {
            tracing::warn!(
                name = kept.name.as_deref().unwrap_or_default(),
                started_message_id = %first.id,
                merged_message_id = %other.id,
                "two different payloads map to one execution name: only the first one's input starts"
            );
        }
    }
}

impl From<Attempt> for Settled {
    fn from(attempt: Attempt) -> Settled {
        match attempt {
            Attempt::Started => Settled::Done(Disposition::Started),
            Attempt::Duplicate => Settled::Done(Disposition::Duplicate),
            Attempt::Permanent(rejection) => Settled::Reject(rejection),
            Attempt::Retry { reason, comeback } => Settled::Retry { reason, comeback },
        }
    }
}

/// The partial batch response: the ids of records to retry, each once, in record order.
pub fn respond(messages: &[Message], dispositions: &[Disposition]) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut listed = HashSet::new();
    for (m, d) in messages.iter().zip(dispositions) {
        if matches!(d, Disposition::Retry(_)) && !m.id.is_empty() && listed.insert(m.id.as_str()) {
            response.add_failure(m.id.clone());
        }
    }
    response
}

#[path = "handler_batch.rs"]
mod batch_phase;

#[path = "handler_cap.rs"]
mod cap_phase;
use cap_phase::Gate;
pub use cap_phase::Running;

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
