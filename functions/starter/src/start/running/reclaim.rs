//! The reclaim: held slots whose check is due (their `check_at` passed), found in the sparse index
//! without a scan, and settled, bounded per sweep in count and time.
//!
//! - Express: the execution cannot run longer than `RUNNING_EXPIRY_SECONDS` (at most 5 minutes)
//!   and cannot be described: the slot is released.
//! - Standard: DescribeExecution (paced under its own quota, see [`crate::handler`]):
//!   - RUNNING: the next check comes after the slot's age again (at least
//!     `RUNNING_EXPIRY_SECONDS`, at most [`MAX_CHECK_INTERVAL`]): a long execution costs about
//!     `log2(day / expiry)` calls in its first day, then one a day;
//!   - ended: released, counted as reclaimed (its event was lost, or is late: then it frees
//!     nothing);
//!   - `ExecutionDoesNotExist`: the start never happened (a crash between the take and the call,
//!     a lost answer of a call that failed): given back once the slot is older than [`grace`]
//!     (the holder deleted, not a tombstone: its message, redelivered, must take a slot again
//!     and be counted; a tombstone would let it start uncounted, as if it had run); before
//!     that, checked again at the end of the grace.
//!
//! Every write is conditioned on the holder as read (held, same check time or attempt), so a
//! sweep racing an event or another sweep frees nothing twice.

use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

use super::cap::Cap;
use super::describe::{DescribeError, DescribeExecution, Described};
use super::{Holder, Write, Written, MAX_CHECK_INTERVAL};
use crate::start::pacing::Pacing;
use crate::start::table::bounded;

/// The shared budget that paces DescribeExecution (in the budget's table, item
/// `quota#describe-execution`; `sfn-pacer-quota --key describe-execution` shows and sets it).
pub const DESCRIBE_QUOTA_KEY: &str = "describe-execution";
/// Its seed: DescribeExecution calls per second, for every instance and deployment together (the
/// quota is 10/s in the large regions: half of it, the rest for other callers).
pub const DESCRIBE_PER_SECOND: f64 = 5.0;
/// Its seed's burst, calls (the quota's bucket is 250 in the large regions).
pub const DESCRIBE_BURST: f64 = 50.0;

/// A slot whose execution does not exist is freed once it is this old (or twice the call
/// timeout, if longer): its StartExecution call has surely ended.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Holders whose check was due and that were looked at.
    pub checked: u64,
    /// DescribeExecution calls made.
    pub described: u64,
    /// Slots whose check was moved on (the execution still runs).
    pub extended: u64,
    /// Slots released (expired, ended, or never started).
    pub reclaimed: u64,
    /// Calls that failed (the holders stay due: the next sweep looks again).
    pub errors: u64,
}

/// How long after its take a slot whose execution does not exist is freed.
pub fn grace(call_timeout: Duration) -> Duration {
    ORPHAN_GRACE.max(call_timeout * 2)
}

/// When a slot of age `age` whose execution still runs is checked next, from now: after its age
/// again, within `[expiry, MAX_CHECK_INTERVAL]`.
pub fn next_check_in(age: Duration, expiry: Duration) -> Duration {
    age.clamp(expiry.min(MAX_CHECK_INTERVAL), MAX_CHECK_INTERVAL)
}

/// What to do with a due holder.
enum Fate {
    Release {
        attempt: u32,
        busy_ms: u64,
    },
    /// The execution never started: the slot is given back (the holder deleted).
    Orphan,
    Extend {
        next_check_at_s: u64,
        attempt: u32,
    },
    /// Leave it due (a failed call); `stop`: the sweep ends here (throttled, out of time).
    Leave {
        stop: bool,
    },
}

impl Cap {
    /// Settles up to `limit` held slots whose check is due, before `latest`; DescribeExecution is
    /// paced by `pacing`. A sweep also ends a freeze of the cap whose held slots now fit.
    pub async fn sweep(
        &self,
        describer: &dyn DescribeExecution,
        pacing: &Pacing,
        limit: usize,
        latest: Instant,
    ) -> Sweep {
        let mut sweep = Sweep::default();
        if let Err(e) = self.read(latest).await {
            tracing::warn!(error = %e, "reclaim: could not read the cap");
        }
        let now_s = self.clock().now_ms() / 1000;
        let due = match bounded(self.call_timeout(), latest, self.store().due(self.key(), now_s, limit)).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "reclaim: could not query the holders whose check is due");
                sweep.errors += 1;
                return sweep;
            }
        };
        for holder in due {
            if Instant::now() >= latest {
                break;
            }
            sweep.checked += 1;
            let fate = match holder.express {
                true => Fate::Release {
                    attempt: holder.attempt,
                    busy_ms: self.age(&holder).as_millis() as u64,
                },
                false => self.describe(describer, pacing, &holder, latest, &mut sweep).await,
            };
            if let Fate::Leave { stop } = fate {
                sweep.errors += 1;
                if stop {
                    break;
                }
                continue;
            }
            match self.settle(&holder, fate, latest).await {
                Ok(Some(true)) => sweep.reclaimed += 1,
                Ok(Some(false)) => sweep.extended += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, execution = %holder.name, "reclaim: could not write the slot");
                    sweep.errors += 1;
                }
            }
        }
        if sweep.reclaimed > 0 {
            tracing::warn!(
                reclaimed = sweep.reclaimed,
                "reclaimed slots whose execution ended without a release (a lost event, an Express expiry, or a start that never happened)"
            );
        }
        sweep
    }

    fn age(&self, holder: &Holder) -> Duration {
        Duration::from_millis(self.clock().now_ms().saturating_sub(holder.taken_at_ms))
    }

    /// DescribeExecution, paced, and what it means for the holder.
    async fn describe(
        &self,
        describer: &dyn DescribeExecution,
        pacing: &Pacing,
        holder: &Holder,
        latest: Instant,
        sweep: &mut Sweep,
    ) -> Fate {
        let Some(slot) = pacing.reserve(latest, || 1).await else {
            return Fate::Leave { stop: true };
        };
        sleep(slot.wait).await;
        let left = latest
            .saturating_duration_since(Instant::now())
            .min(self.call_timeout());
        sweep.described += 1;
        let answer = timeout(left, describer.describe_execution(&holder.execution_arn))
            .await
            .unwrap_or_else(|_| Err(DescribeError::Failed("no answer in time".into())));
        let age = self.age(holder);
        let now_s = self.clock().now_ms() / 1000;
        match answer {
            Ok(described) => {
                pacing.on_success(slot).await;
                match described {
                    Described::Running { redrive_count } => Fate::Extend {
                        next_check_at_s: now_s + next_check_in(age, self.expiry()).as_secs(),
                        attempt: holder.attempt.max(redrive_count),
                    },
                    // The slot was held until now (its event was lost), not only while it ran.
                    Described::Ended { redrive_count, .. } => Fate::Release {
                        attempt: holder.attempt.max(redrive_count),
                        busy_ms: age.as_millis() as u64,
                    },
                    Described::NotFound if age >= grace(self.call_timeout()) => Fate::Orphan,
                    Described::NotFound => Fate::Extend {
                        next_check_at_s: (holder.taken_at_ms / 1000 + grace(self.call_timeout()).as_secs())
                            .max(now_s + 1),
                        attempt: holder.attempt,
                    },
                }
            }
            Err(DescribeError::Throttled(e)) => {
                pacing.on_throttle(slot).await;
                tracing::warn!(error = %e, "reclaim: DescribeExecution is throttled; the sweep stops here");
                Fate::Leave { stop: true }
            }
            Err(DescribeError::Failed(e)) => {
                tracing::warn!(error = %e, execution_arn = %holder.execution_arn, "reclaim: DescribeExecution failed");
                Fate::Leave { stop: false }
            }
        }
    }

    /// Writes a fate: `Some(true)` released, `Some(false)` extended, `None` refused (the holder
    /// changed since it was read: an event or another sweep settled it).
    async fn settle(
        &self,
        holder: &Holder,
        fate: Fate,
        latest: Instant,
    ) -> Result<Option<bool>, crate::start::table::StoreError> {
        let (write, released) = match fate {
            Fate::Release { attempt, busy_ms } => (
                Write::Release {
                    scope: holder.scope.clone(),
                    name: holder.name.clone(),
                    shard: holder.shard,
                    attempt,
                    busy_ms,
                    released_at_ms: self.clock().now_ms(),
                },
                true,
            ),
            Fate::Orphan => (
                Write::GiveBack {
                    scope: holder.scope.clone(),
                    name: holder.name.clone(),
                    shard: holder.shard,
                    taken_at_ms: holder.taken_at_ms,
                },
                true,
            ),
            Fate::Extend {
                next_check_at_s,
                attempt,
            } => (
                Write::Extend {
                    scope: holder.scope.clone(),
                    name: holder.name.clone(),
                    check_at_s: holder.check_at_s,
                    next_check_at_s,
                    attempt,
                },
                false,
            ),
            Fate::Leave { .. } => return Ok(None),
        };
        match bounded(self.call_timeout(), latest, self.store().write(self.key(), &write)).await? {
            Written::Applied(_) => {
                if released {
                    self.unreserve(holder.shard);
                }
                Ok(Some(released))
            }
            Written::Refused(_) => Ok(None),
        }
    }
}
