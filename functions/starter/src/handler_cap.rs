//! The handler's running slots (`MAX_RUNNING_EXECUTIONS`, [`crate::start::running`]).
//!
//! Per attempt: the start slot is reserved and waited for, then the running slot is taken, right
//! before the call; if none is free, the start slot is put back ([`Pacing::put_back`]) and the
//! unit waits at the cap. So no message holds a running slot while it waits for a start slot,
//! and no start slot of the quota is spent while no running slot is free. The call's outcome
//! decides the slot's fate:
//! - started, or no answer (a timeout, a transport error, a 5xx: it may run) → kept; the reclaim
//!   settles a start that never happened;
//! - surely not started (throttled, rejected, systemic, a duplicate of a closed execution) → given
//!   back at once, if this attempt took it;
//! - a slot taken after the cutoff → given back, unused.
//!
//! A fresh message joins the back of the waiting line while the line holds messages (it does not
//! try); a message that comes back tries first ([`crate::start::running::line`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Attempt, Invocation, Starter, Unit, DEADLINE_REASON};
use crate::close::{Comeback, Settled};
use crate::config::WorkflowType;
use crate::metrics::Count;
use crate::start::budget::lease::SharedPacer;
use crate::start::budget::{BudgetState, Store};
use crate::start::clock::Clock;
use crate::start::pace::Pacer;
use crate::start::pacing::Pacing;
use crate::start::running::cap::{Cap, Slot, Taken};
use crate::start::running::describe::DescribeExecution;
use crate::start::running::reclaim::{Sweep, DESCRIBE_BURST, DESCRIBE_PER_SECOND, DESCRIBE_QUOTA_KEY};
use crate::start::running::RunningStore;

/// Holders this many seconds older than a call timeout are no longer being started by another
/// delivery: an attempt that took a slot has settled it by then.
const SETTLE_AFTER_CALL: Duration = Duration::from_secs(2);
/// A starter that finds the cap full settles at most this many due slots in one sweep ...
const STARTER_SWEEP_LIMIT: usize = 10;
/// ... within this long (its invocation is billed meanwhile; the scheduled sweep does the rest).
const STARTER_SWEEP_TIME: Duration = Duration::from_secs(1);

/// The cap, as the starter uses it: the slots, and the reclaim's DescribeExecution, paced under
/// its own quota (the shared budget `describe-execution`).
pub struct Running {
    cap: Cap,
    describer: Arc<dyn DescribeExecution>,
    pacing: Pacing,
}

impl Running {
    /// The cap and the describe pacer, reading the time from `clock`.
    pub(crate) fn with_clock(self, clock: Clock) -> Running {
        let pacing = match self.pacing {
            Pacing::Shared(shared) => Pacing::Shared(Box::new(shared.with_clock(clock.clone()))),
            local => local,
        };
        Running {
            cap: self.cap.with_clock(clock),
            pacing,
            ..self
        }
    }

    /// The cap.
    pub fn cap(&self) -> &Cap {
        &self.cap
    }

    /// Settles up to `limit` slots whose check is due, before `latest`.
    pub async fn sweep(&self, limit: usize, latest: Instant) -> Sweep {
        let sweep = self
            .cap
            .sweep(self.describer.as_ref(), &self.pacing, limit, latest)
            .await;
        if let Pacing::Shared(shared) = &self.pacing {
            shared.give_back(latest).await;
        }
        sweep
    }
}

/// What the running slot says before the call.
pub(super) enum Gate {
    /// Call; with the slot this attempt took (`None`: no cap, or the execution holds one already).
    Go(Option<Slot>),
    /// Do not call: the unit settles so.
    Stop(Attempt),
    /// No slot is free: the unit settles so, unless it may wait in the invocation ([`HOLD`]).
    Full(Attempt),
}

/// A due message (it came back from the line) that finds the cap full waits in its invocation up
/// to this long for a slot, trying again each time the cap's view is stale (every
/// [`crate::start::running::cap::REFRESH`]), its start slot given back meanwhile: the slot it is due
/// for is usually a moment late (visibility timeouts are whole seconds, and a release comes by
/// EventBridge), and coming back for it would cost a receive, while the next due messages would
/// take the slots freed meanwhile.
pub const HOLD: Duration = Duration::from_secs(1);

impl Starter {
    /// Caps running executions (`MAX_RUNNING_EXECUTIONS`) with the slots in `store`; the reclaim
    /// describes executions with `describer`, paced by the budget `describe-execution` in `budget`
    /// (seeded at 5 calls/s, burst 50: DescribeExecution's own quota is 10/s, burst 250, in the
    /// large regions). Without `MAX_RUNNING_EXECUTIONS`, nothing changes.
    pub fn with_cap(
        mut self,
        store: Arc<dyn RunningStore>,
        describer: Arc<dyn DescribeExecution>,
        budget: Arc<dyn Store>,
    ) -> Starter {
        let Some(cap) = Cap::new(store, &self.config, Clock::system()) else {
            return self;
        };
        let split = f64::from(self.config.max_concurrency);
        let fallback = Pacer::new(
            DESCRIBE_PER_SECOND / split,
            (DESCRIBE_BURST / split).max(1.0),
            Instant::now(),
        );
        let shared = SharedPacer::new(
            budget,
            DESCRIBE_QUOTA_KEY,
            BudgetState::new(DESCRIBE_PER_SECOND, DESCRIBE_BURST),
            fallback,
            self.config.call_timeout,
        );
        self.running = Some(Running {
            cap,
            describer,
            pacing: Pacing::Shared(Box::new(shared)),
        });
        self
    }

    /// The cap on running executions, if there is one.
    pub fn running(&self) -> Option<&Running> {
        self.running.as_ref()
    }
}

impl Invocation<'_> {
    fn cap(&self) -> Option<&Cap> {
        self.starter.running.as_ref().map(|r| &r.cap)
    }

    /// Until when `unit` may wait in the invocation for a running slot ([`HOLD`]): a message that
    /// came back from the line, once the cap's completion rate is measured.
    pub(super) fn hold_until(&self, unit: &Unit) -> Option<Instant> {
        let cap = self.cap()?;
        let head = &self.messages[*unit.members.first()?];
        (head.is_comeback() && cap.measured()).then(|| (Instant::now() + HOLD).min(self.cutoff))
    }

    /// A unit that waits in line without trying: a fresh message while the line holds messages,
    /// or a re-sent message that came back before its due time.
    pub(super) fn waits_in_line(&self, unit: &Unit) -> Option<Attempt> {
        let cap = self.cap()?;
        let head = &self.messages[*unit.members.first()?];
        if let Some(due_ms) = head.due_at_ms() {
            if due_ms > cap.clock().now_ms() + 1_000 {
                return Some(Attempt::Retry {
                    reason: "waiting for a running slot until its due time".to_string(),
                    comeback: Comeback::AtCap(Some(cap.clock().instant_ms(due_ms))),
                });
            }
        }
        if head.is_comeback() || cap.admits_fresh() {
            return None;
        }
        Some(Attempt::Retry {
            reason: "waiting for a running slot: joined the back of the line".to_string(),
            comeback: Comeback::AtCap(None),
        })
    }

    /// Takes the running slot of the execution `name` right before its call (`kept`: this
    /// invocation holds it already, from an attempt whose answer was lost).
    pub(super) async fn gate(&self, name: Option<&str>, kept: bool) -> Gate {
        let (Some(cap), Some(name), false) = (self.cap(), name, kept) else {
            return Gate::Go(None);
        };
        let mut taken = cap.take(name, 0, self.cutoff).await;
        let express = self.config().workflow_type == WorkflowType::Express;
        if let (true, Taken::Ended { attempt }) = (express, &taken) {
            // Express is at-least-once: a redelivered message starts again, counted anew.
            taken = cap.take(name, attempt.saturating_add(1), self.cutoff).await;
        }
        match taken {
            Taken::Now(slot) if Instant::now() >= self.cutoff => {
                self.give_back(slot).await;
                Gate::Stop(Attempt::Retry {
                    reason: DEADLINE_REASON.to_string(),
                    comeback: Comeback::Now,
                })
            }
            Taken::Now(slot) => Gate::Go(Some(slot)),
            Taken::Held {
                taken_at_ms,
                check_at_s,
            } => self.held(cap, name, express, taken_at_ms, check_at_s),
            // Standard: it ran; StartExecution answers ExecutionAlreadyExists.
            Taken::Ended { .. } => Gate::Go(None),
            Taken::Full { held, cap } => Gate::Full(Attempt::Retry {
                reason: format!("waiting for a running slot: {held} of {cap} held"),
                comeback: Comeback::AtCap(None),
            }),
            Taken::Failed(e) => {
                tracing::warn!(error = %e, execution = name, "the cap's table could not be used: reported for retry");
                Gate::Stop(Attempt::Retry {
                    reason: format!("the cap's table could not be used: {e}"),
                    comeback: Comeback::Backoff,
                })
            }
        }
    }

    /// The execution holds a slot already (another delivery took it).
    fn held(&self, cap: &Cap, name: &str, express: bool, taken_at_ms: u64, check_at_s: u64) -> Gate {
        let age = Duration::from_millis(cap.clock().now_ms().saturating_sub(taken_at_ms));
        let settle = self.starter.config.call_timeout + SETTLE_AFTER_CALL;
        if express {
            // Its execution may run (an answer was lost): a second start would run uncounted, so
            // the message waits until that slot expires, then starts, counted.
            return Gate::Stop(Attempt::Retry {
                reason: format!("an earlier delivery's Express execution {name} holds the slot until it expires"),
                comeback: Comeback::AtCap(Some(cap.clock().instant_ms(check_at_s.saturating_mul(1000)))),
            });
        }
        if age < settle {
            // A concurrent delivery may still be starting it, and give the slot back. It waits on
            // the cap's slot: before its last receive it is re-sent, like any message at the cap.
            return Gate::Stop(Attempt::Retry {
                reason: format!("another delivery is starting {name}"),
                comeback: Comeback::AtCap(Some(Instant::now() + settle - age)),
            });
        }
        // Standard: StartExecution returns the running execution, or ExecutionAlreadyExists.
        Gate::Go(None)
    }

    /// Gives back a slot the call surely did not use, bounded by the call timeout.
    pub(super) async fn give_back(&self, slot: Slot) {
        let Some(cap) = self.cap() else { return };
        let latest = Instant::now() + self.starter.config.call_timeout;
        if let Err(e) = cap.give_back(&slot, latest).await {
            tracing::warn!(error = %e, execution = %slot.name, "could not give back a running slot: the reclaim frees it");
        }
    }

    /// After the start phase: when units waited at the cap, a bounded sweep (at most one per
    /// instance every few seconds), so that slots of lost events come back without waiting for
    /// the scheduled one; before the cutoff.
    pub(super) async fn sweep_if_full(&self, settled: &[(Vec<usize>, Settled)]) {
        let Some(running) = &self.starter.running else { return };
        let at_cap = settled.iter().any(|(_, s)| {
            matches!(
                s,
                Settled::Retry {
                    comeback: Comeback::AtCap(_),
                    ..
                }
            )
        });
        if !at_cap || Instant::now() >= self.cutoff || !running.cap.sweep_due() {
            return;
        }
        let latest = (Instant::now() + STARTER_SWEEP_TIME).min(self.cutoff);
        let sweep = running.sweep(STARTER_SWEEP_LIMIT, latest).await;
        self.tally.add_many(Count::SlotsReclaimed, sweep.reclaimed);
    }
}
