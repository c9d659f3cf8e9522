//! An in-process coordination table with DynamoDB's semantics, for unit tests and benchmarks:
//! the budget ([`Store`]: each write is atomic and conditional, [`BudgetState::apply`]) and the
//! per-message claims ([`crate::start::claim::ClaimStore`], in [`crate::start::claim::memory`]), with a
//! latency per call (DynamoDB's is a few milliseconds) and failures that can be switched on.
//!
//! What it leaves out: DynamoDB's own throttling and capacity, a network between callers, and
//! transaction conflicts (calls are serialised, so two transactions never overlap).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{BudgetState, Store, StoreError, Update, Written};

/// The in-memory table.
#[derive(Debug, Default)]
pub struct MemoryStore {
    items: Mutex<HashMap<String, BudgetState>>,
    /// Claims and execution records by partition key (see [`crate::start::claim::memory`]).
    pub(crate) claims: Mutex<HashMap<String, crate::start::claim::memory::ClaimItem>>,
    /// Items written by claim transactions.
    pub(crate) claim_writes: AtomicU64,
    latency: Mutex<(Duration, Duration)>,
    failure: Mutex<Option<String>>,
    calls: AtomicU64,
}

impl MemoryStore {
    /// An empty table with no latency.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every call takes `min` plus a uniform share of `max − min`.
    pub fn with_latency(self, min: Duration, max: Duration) -> MemoryStore {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = (min, max.max(min));
        self
    }

    /// From now on every call fails with `message` (`None`: calls succeed again).
    pub fn set_failure(&self, message: Option<&str>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = message.map(str::to_string);
    }

    /// Calls made (reads and writes, failed ones too).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The item under `key`, as it is now.
    pub fn item(&self, key: &str) -> Option<BudgetState> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    pub(crate) async fn call(&self) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (min, max) = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        if !max.is_zero() {
            let spread = (max - min).as_secs_f64() * crate::close::backoff::unit_random();
            tokio::time::sleep(min + Duration::from_secs_f64(spread)).await;
        }
        match self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(message) => Err(StoreError(message)),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<BudgetState>, StoreError> {
        self.call().await?;
        Ok(self.item(key))
    }

    async fn write(&self, key: &str, update: &Update) -> Result<Written, StoreError> {
        self.call().await?;
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let written = BudgetState::apply(items.get(key), update);
        if let Written::Applied(state) = &written {
            items.insert(key.to_string(), state.clone());
        }
        Ok(written)
    }
}
