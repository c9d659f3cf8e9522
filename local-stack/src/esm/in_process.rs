//! Invoking [`Starter`]s in this process, one per poller (one per simulated Lambda instance,
//! each with its own pacer), the way Lambda would: the event is the JSON the mapping built,
//! the deadline is now + the function timeout, and the answer is the JSON response, a function
//! error, or a timeout.
//!
//! What it leaves out: the Runtime API's HTTP hop and its latency, and cold starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sfn_pacer::handler::now_epoch_ms;
use sfn_pacer::metrics::Report;
use sfn_pacer::Starter;

use super::event::SqsEvent;
use super::response::InvokeOutcome;
use super::runner::Invoker;

/// `Starter`s called directly.
pub struct InProcess {
    starters: Vec<Arc<Starter>>,
    function_timeout: Duration,
    short_deadline: Option<(u64, Duration)>,
    kill: Option<Kill>,
    invocations: AtomicU64,
    killed: AtomicU64,
    /// The messages of the killed invocations (a re-sent one under its first id).
    killed_messages: Mutex<Vec<String>>,
    totals: Mutex<Report>,
}

/// Kills some invocations part-way, as a crash or an out-of-memory kill of the execution
/// environment would: the function believes it has its whole timeout, and is stopped `after`
/// into invocation number `n` when `n % every == phase`. Its batch comes back whole.
#[derive(Debug, Clone, Copy)]
pub struct Kill {
    /// Every how many invocations.
    pub every: u64,
    /// Which one of each `every`.
    pub phase: u64,
    /// How long into the invocation.
    pub after: Duration,
}

impl InProcess {
    /// Poller `i` calls `starters[i % starters.len()]`, with a deadline `function_timeout` away.
    /// `short_deadline = Some((n, d))` gives every n-th invocation only `d`, so that it is cut
    /// off at that deadline, as a Lambda timeout would.
    pub fn new(
        starters: Vec<Arc<Starter>>,
        function_timeout: Duration,
        short_deadline: Option<(u64, Duration)>,
    ) -> InProcess {
        InProcess {
            starters,
            function_timeout,
            short_deadline,
            kill: None,
            invocations: AtomicU64::new(0),
            killed: AtomicU64::new(0),
            killed_messages: Mutex::new(Vec::new()),
            totals: Mutex::new(Report::default()),
        }
    }

    /// Also kills some invocations part-way (see [`Kill`]).
    pub fn with_kill(mut self, kill: Option<Kill>) -> InProcess {
        self.kill = kill;
        self
    }

    /// Invocations killed part-way (still running when their kill came).
    pub fn killed(&self) -> u64 {
        self.killed.load(Ordering::Relaxed)
    }

    /// The messages of the invocations killed part-way, by their first id (a re-sent message's
    /// `sfn-pacer.message-id`): each such receive ended in a crash.
    pub fn killed_messages(&self) -> Vec<String> {
        self.killed_messages.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The handlers' counts (started, throttled, table calls, …), summed over invocations.
    pub fn totals(&self) -> Report {
        self.totals.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This invocation's time budget (its deadline), and when it is killed, if it is.
    fn budget(&self) -> (Duration, Option<Duration>) {
        let n = self.invocations.fetch_add(1, Ordering::Relaxed) + 1;
        let budget = match self.short_deadline {
            Some((every, short)) if every > 0 && n.is_multiple_of(every) => short,
            _ => self.function_timeout,
        };
        let kill = self
            .kill
            .filter(|k| k.every > 0 && n % k.every == k.phase)
            .map(|k| k.after.min(budget));
        (budget, kill)
    }
}

/// A record's first id: the `sfn-pacer.message-id` it carries (re-sent), else its message id.
fn first_id(record: &super::event::SqsMessage) -> String {
    record
        .message_attributes
        .get(sfn_pacer::plan::event::MESSAGE_ID_ATTRIBUTE)
        .and_then(|a| a.string_value.clone())
        .or_else(|| record.message_id.clone())
        .unwrap_or_default()
}

/// The runtime's error document, as Lambda returns it for a handler error.
fn function_error(error_type: &str, message: &str) -> InvokeOutcome {
    InvokeOutcome::Response {
        status: 200,
        function_error: Some("Unhandled".to_string()),
        body: serde_json::json!({ "errorType": error_type, "errorMessage": message })
            .to_string()
            .into_bytes(),
    }
}

impl Invoker for InProcess {
    async fn invoke(&self, poller: usize, payload: Vec<u8>) -> InvokeOutcome {
        let Some(starter) = self.starters.get(poller % self.starters.len().max(1)) else {
            return InvokeOutcome::Transport("no function instance to invoke".to_string());
        };
        let event: SqsEvent = match serde_json::from_slice(&payload) {
            Ok(event) => event,
            Err(e) => return function_error("Runtime.UnmarshalError", &e.to_string()),
        };
        let (budget, kill) = self.budget();
        let deadline_ms = now_epoch_ms().saturating_add(u64::try_from(budget.as_millis()).unwrap_or(u64::MAX));
        let cut_off = kill.unwrap_or(budget);
        let ids: Vec<String> = event.records.iter().map(first_id).collect();
        match tokio::time::timeout(cut_off, starter.process(event, deadline_ms)).await {
            Err(_) => {
                if kill.is_some() {
                    self.killed.fetch_add(1, Ordering::Relaxed);
                    self.killed_messages
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(ids);
                }
                InvokeOutcome::TimedOut(cut_off)
            }
            Ok(Err(e)) => function_error("EventError", &e.to_string()),
            Ok(Ok(outcome)) => {
                self.totals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add_counts(&outcome.report);
                match serde_json::to_vec(&outcome.response) {
                    Ok(body) => InvokeOutcome::Response {
                        status: 200,
                        function_error: None,
                        body,
                    },
                    Err(e) => function_error("Runtime.SerializationError", &e.to_string()),
                }
            }
        }
    }
}
