//! An in-process coordination table with DynamoDB's semantics, for unit tests, the chaos test
//! and the benchmarks: one table that every store of the function lives in (the budget,
//! [`budget`]; the per-message claims, [`claims`]; the cap on running executions, [`running`]),
//! as in DynamoDB.
//!
//! What it models:
//! - each write is atomic and conditional; a transaction is all or nothing (calls are
//!   serialised on the items' lock, so two transactions never overlap);
//! - DynamoDB's limits ([`crate::start::table`]): item and transaction sizes, and the write
//!   units each item takes per second ([`TableFaults::item_write_units_per_second`], 1,000 by
//!   default). A write past an item's capacity is throttled, not applied, as DynamoDB does; a
//!   refused conditional write consumes its units too;
//! - a latency per call, and faults in the shape of the fake Step Functions endpoint's
//!   ([`TableFaults`]): slow answers (the write applied on time, the answer late), 500s (not
//!   applied), lost answers (applied, the answer lost), throttles (not applied), drawn from a
//!   seeded generator.
//!
//! What it leaves out: read capacity (3,000 read units per item per second), which it counts
//! but does not enforce ([`MemoryStore::busiest_budget_reads`]: the benchmarks report it), a
//! network between callers (a call is applied halfway through its latency), DynamoDB's adaptive
//! capacity and partition splits, TTL deletion (expired items stay: DynamoDB's TTL deletes them
//! up to days late anyway), and the write capacity of a global secondary index's partitions (the
//! cap's index spreads its writes over 16 of them), whose queries it answers at once (DynamoDB's
//! are eventually consistent). Clock skew is not the table's: it is the lessee's
//! (`start::clock::Clock::skewed`).

pub mod budget;
pub mod claims;
pub mod running;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::start::budget::BudgetState;
use crate::start::table::{StoreError, ITEM_WRITE_UNITS_PER_SECOND};
pub use claims::ClaimItem;

/// The table's latency and faults. Each call gets at most one fault: one uniform draw picks
/// among them, so their probabilities must each lie in `[0, 1]` and sum to at most 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TableFaults {
    /// Every call takes a uniform time in `[latency_min, latency_max]`.
    pub latency_min: Duration,
    /// See `latency_min`.
    pub latency_max: Duration,
    /// Probability of a slow answer: the call is applied on time, its answer comes
    /// `slow_delay` later (the slow tail of a real table).
    pub slow_probability: f64,
    /// How much later a slow answer comes.
    pub slow_delay: Duration,
    /// Probability of a 500 `InternalServerError`, not applied.
    pub error_500_probability: f64,
    /// Probability that the call is applied and its answer lost (a connection reset).
    pub lost_answer_probability: f64,
    /// Probability of a `ThrottlingException`, not applied.
    pub throttle_probability: f64,
    /// The write units each item takes per second (one second's worth may be used at once);
    /// `None`: no limit.
    pub item_write_units_per_second: Option<f64>,
}

impl Default for TableFaults {
    /// No latency and no faults, but DynamoDB's per-item write limit.
    fn default() -> TableFaults {
        TableFaults {
            latency_min: Duration::ZERO,
            latency_max: Duration::ZERO,
            slow_probability: 0.0,
            slow_delay: Duration::ZERO,
            error_500_probability: 0.0,
            lost_answer_probability: 0.0,
            throttle_probability: 0.0,
            item_write_units_per_second: Some(ITEM_WRITE_UNITS_PER_SECOND),
        }
    }
}

impl TableFaults {
    /// A table as a real one can be: 10 – 30 ms per call, 3 % of answers 150 ms late (applied on
    /// time), 1 % 500s, 1 % lost answers (applied), 1 % throttled; DynamoDB's per-item write
    /// limit. The unit tests, the chaos test and the benchmarks use it.
    pub fn faulty() -> TableFaults {
        TableFaults {
            latency_min: Duration::from_millis(10),
            latency_max: Duration::from_millis(30),
            slow_probability: 0.03,
            slow_delay: Duration::from_millis(150),
            error_500_probability: 0.01,
            lost_answer_probability: 0.01,
            throttle_probability: 0.01,
            ..TableFaults::default()
        }
    }
}

/// What happens to a call besides its latency: drawn from [`TableFaults`], or scripted for the
/// next calls ([`MemoryStore::inject_next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Applied on time, answered [`TableFaults::slow_delay`] late.
    Slow,
    /// A 500, not applied.
    Error500,
    /// Applied, the answer lost.
    Lost,
    /// A `ThrottlingException`, not applied.
    Throttle,
}

/// What the budget's writes did ([`MemoryStore::budget_counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BudgetCounts {
    /// Reads (GetItem).
    pub reads: u64,
    /// Writes applied.
    pub applied: u64,
    /// Writes refused by their condition (they consume write units too).
    pub refused: u64,
    /// Applied writes that lowered the shared factor (after a throttle).
    pub decreases: u64,
}

/// One write a call makes: the item's partition key and the write units it consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemWrite {
    /// The item's partition key.
    pub pk: String,
    /// Write units ([`crate::start::table::write_units`]).
    pub units: u64,
}

/// An item's write capacity: a token bucket of write units.
#[derive(Debug, Clone, Copy)]
struct Capacity {
    units: f64,
    at: Instant,
}

/// What the table counted.
#[derive(Debug, Default)]
struct Counts {
    /// Write units by item, by whole second since the table was made.
    units: HashMap<String, HashMap<u64, u64>>,
    /// Faults injected, and writes throttled for the per-item limit.
    injected: HashMap<&'static str, u64>,
    /// The budget's reads and writes.
    budget: BudgetCounts,
    /// The budget's reads, by item and whole second since the table was made (an item takes
    /// 3,000 read units a second).
    budget_reads: HashMap<(String, u64), u64>,
}

/// The in-memory table.
#[derive(Debug)]
pub struct MemoryStore {
    pub(crate) budgets: Mutex<HashMap<String, BudgetState>>,
    pub(crate) claims: Mutex<HashMap<String, ClaimItem>>,
    pub(crate) claim_writes: AtomicU64,
    pub(crate) running: Mutex<HashMap<String, crate::start::running::Item>>,
    faults: Mutex<TableFaults>,
    /// Faults of the next calls, in order, before the drawn ones (`None`: no fault).
    scripted: Mutex<std::collections::VecDeque<Option<Fault>>>,
    failure: Mutex<Option<String>>,
    rng: Mutex<StdRng>,
    capacity: Mutex<HashMap<String, Capacity>>,
    counts: Mutex<Counts>,
    calls: AtomicU64,
    made: Instant,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the plain maps inconsistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    /// An empty table: no latency, no faults, DynamoDB's per-item write limit.
    pub fn new() -> MemoryStore {
        MemoryStore {
            budgets: Mutex::default(),
            claims: Mutex::default(),
            claim_writes: AtomicU64::new(0),
            running: Mutex::default(),
            faults: Mutex::new(TableFaults::default()),
            scripted: Mutex::default(),
            failure: Mutex::new(None),
            rng: Mutex::new(StdRng::from_os_rng()),
            capacity: Mutex::default(),
            counts: Mutex::default(),
            calls: AtomicU64::new(0),
            made: Instant::now(),
        }
    }

    /// Every call takes `min` plus a uniform share of `max − min`.
    pub fn with_latency(self, min: Duration, max: Duration) -> MemoryStore {
        {
            let mut faults = lock(&self.faults);
            faults.latency_min = min;
            faults.latency_max = max.max(min);
        }
        self
    }

    /// These latency and faults from now on.
    pub fn with_faults(self, faults: TableFaults) -> MemoryStore {
        self.set_faults(faults);
        self
    }

    /// Draws latencies and faults from a generator seeded with `seed`.
    pub fn with_seed(self, seed: u64) -> MemoryStore {
        *lock(&self.rng) = StdRng::seed_from_u64(seed);
        self
    }

    /// Changes the latency and faults of the calls that start from now on.
    pub fn set_faults(&self, faults: TableFaults) {
        *lock(&self.faults) = faults;
    }

    /// The next calls get these faults, in order (`None`: none), whatever [`TableFaults`] draws;
    /// then the draws resume. A test's way to inject exactly one 500 or one lost answer.
    pub fn inject_next(&self, faults: &[Option<Fault>]) {
        lock(&self.scripted).extend(faults.iter().copied());
    }

    /// What the budget's reads and writes did.
    pub fn budget_counts(&self) -> BudgetCounts {
        lock(&self.counts).budget
    }

    pub(crate) fn count_budget(&self, f: impl FnOnce(&mut BudgetCounts)) {
        f(&mut lock(&self.counts).budget);
    }

    pub(crate) fn count_budget_read(&self, key: &str) {
        let second = Instant::now().saturating_duration_since(self.made).as_secs();
        let mut counts = lock(&self.counts);
        counts.budget.reads += 1;
        *counts.budget_reads.entry((key.to_string(), second)).or_default() += 1;
    }

    /// The most reads of one budget item in one second (strongly consistent reads of a small
    /// item: one read unit each; an item takes 3,000 a second).
    pub fn busiest_budget_reads(&self) -> u64 {
        lock(&self.counts).budget_reads.values().copied().max().unwrap_or(0)
    }

    /// From now on every call fails with `message` (`None`: calls succeed again): the table is
    /// unreachable.
    pub fn set_failure(&self, message: Option<&str>) {
        *lock(&self.failure) = message.map(str::to_string);
    }

    /// Calls made (reads and writes, failed ones too).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// How many times each fault was injected, and how many calls the per-item write limit
    /// throttled (`"item-throttled"`).
    pub fn injected(&self) -> HashMap<&'static str, u64> {
        lock(&self.counts).injected.clone()
    }

    /// The busiest item: its partition key and the most write units it took in one second
    /// (refused conditional writes included; throttled ones not: they were not applied).
    pub fn busiest_item(&self) -> Option<(String, u64)> {
        self.busiest_item_from(0)
    }

    /// [`MemoryStore::busiest_item`] over the seconds from `second` on (seconds since the table
    /// was made).
    pub fn busiest_item_from(&self, second: u64) -> Option<(String, u64)> {
        let counts = lock(&self.counts);
        counts
            .units
            .iter()
            .filter_map(|(pk, seconds)| {
                let peak = seconds.iter().filter(|(s, _)| **s >= second).map(|(_, u)| *u).max()?;
                Some((pk.clone(), peak))
            })
            .max_by_key(|(_, peak)| *peak)
    }

    /// Write units consumed, by item, over the table's life.
    pub fn write_units_by_item(&self) -> HashMap<String, u64> {
        lock(&self.counts)
            .units
            .iter()
            .map(|(pk, seconds)| (pk.clone(), seconds.values().sum()))
            .collect()
    }

    /// One call: its latency, at most one injected fault, the per-item write limit for
    /// `writes`, then `apply` (with the items it needs locked inside it). A slow answer comes
    /// late; a lost one is applied and then fails; a 500 or a throttle is not applied.
    pub(crate) async fn call<T>(&self, writes: &[ItemWrite], apply: impl FnOnce() -> T) -> Result<T, StoreError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (latency, fault, slow_delay) = self.draw();
        // A zero wait is no wait: tokio's timer would round it up to its next millisecond, which on
        // a paused clock adds a millisecond of simulated time to every call.
        pause(latency / 2).await;
        if let Some(message) = lock(&self.failure).clone() {
            return Err(StoreError::unknown(message));
        }
        match fault {
            Some(Fault::Error500) => return Err(StoreError::unknown("InternalServerError (500), not applied")),
            Some(Fault::Throttle) => return Err(StoreError::throttled("ThrottlingException (injected)")),
            _ => {}
        }
        if let Some(pk) = self.take_capacity(writes) {
            self.count("item-throttled");
            return Err(StoreError::throttled(format!(
                "ThrottlingException: item {pk} is over its write capacity"
            )));
        }
        let out = apply();
        let late = match fault {
            Some(Fault::Slow) => slow_delay,
            _ => Duration::ZERO,
        };
        pause(latency / 2 + late).await;
        match fault {
            Some(Fault::Lost) => Err(StoreError::unknown("connection reset: the answer was lost (applied)")),
            _ => Ok(out),
        }
    }

    /// The call's latency and fault, and how late a slow answer comes.
    fn draw(&self) -> (Duration, Option<Fault>, Duration) {
        let f = *lock(&self.faults);
        let mut rng = lock(&self.rng);
        let spread = f.latency_max.saturating_sub(f.latency_min);
        let latency = f.latency_min + spread.mul_f64(rng.random::<f64>());
        let draw: f64 = rng.random();
        let mut edge = 0.0;
        let mut fault = None;
        for (p, which) in [
            (f.slow_probability, Fault::Slow),
            (f.error_500_probability, Fault::Error500),
            (f.lost_answer_probability, Fault::Lost),
            (f.throttle_probability, Fault::Throttle),
        ] {
            edge += p.clamp(0.0, 1.0);
            if fault.is_none() && draw < edge {
                fault = Some(which);
            }
        }
        if let Some(scripted) = lock(&self.scripted).pop_front() {
            fault = scripted;
        }
        if let Some(which) = fault {
            self.count(match which {
                Fault::Slow => "slow",
                Fault::Error500 => "error-500",
                Fault::Lost => "lost-answer",
                Fault::Throttle => "throttle",
            });
        }
        (latency, fault, f.slow_delay)
    }

    /// Takes the write units of `writes` from their items' capacity, all or none; the first
    /// item without enough capacity, if any (then nothing is taken).
    fn take_capacity(&self, writes: &[ItemWrite]) -> Option<String> {
        let now = Instant::now();
        let per_second = lock(&self.faults).item_write_units_per_second;
        let mut capacity = lock(&self.capacity);
        if let Some(rate) = per_second.filter(|r| r.is_finite() && *r > 0.0) {
            for w in writes {
                let c = capacity
                    .entry(w.pk.clone())
                    .or_insert(Capacity { units: rate, at: now });
                c.units = (c.units + rate * now.saturating_duration_since(c.at).as_secs_f64()).min(rate);
                c.at = now;
            }
            if let Some(w) = writes.iter().find(|w| capacity[&w.pk].units < w.units as f64) {
                return Some(w.pk.clone());
            }
            for w in writes {
                if let Some(c) = capacity.get_mut(&w.pk) {
                    c.units -= w.units as f64;
                }
            }
        }
        drop(capacity);
        let second = now.saturating_duration_since(self.made).as_secs();
        let mut counts = lock(&self.counts);
        for w in writes {
            *counts.units.entry(w.pk.clone()).or_default().entry(second).or_default() += w.units;
        }
        None
    }

    fn count(&self, what: &'static str) {
        *lock(&self.counts).injected.entry(what).or_default() += 1;
    }
}

/// Sleeps for `wait`, if there is any to sleep.
async fn pause(wait: Duration) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
