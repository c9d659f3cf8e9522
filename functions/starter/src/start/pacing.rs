//! How one instance paces: its own share of the budget ([`Pacer`], the static split), or the
//! shared budget ([`SharedPacer`], coordinated mode). The handler sees only this choice.

use std::time::Duration;

use tokio::time::Instant;

use crate::start::budget::lease::SharedPacer;
use crate::start::pace::{Pacer, Slot};

/// The pacing of one instance: its own share of the budget, or the shared budget.
pub enum Pacing {
    /// The static split: `STARTS_PER_SECOND / MAX_CONCURRENCY` per instance.
    Local(Pacer),
    /// One budget for every instance, coordinated in the table (`COORDINATION_TABLE`).
    Shared(Box<SharedPacer>),
}

impl Pacing {
    /// Reserves the next call, unless it would have to wait past `latest`; `demand` says how
    /// many calls the caller's invocation still needs slots for (it sizes shared leases).
    pub async fn reserve(&self, latest: Instant, demand: impl Fn() -> u64) -> Option<Slot> {
        match self {
            Pacing::Local(pacer) => pacer.reserve(Instant::now(), latest),
            Pacing::Shared(shared) => shared.reserve(latest, demand).await,
        }
    }

    /// How long until this instance expects its next slot, from what it knows now (zero: one
    /// is due, or it cannot tell); takes nothing and calls nothing.
    pub async fn free_in(&self) -> Duration {
        match self {
            Pacing::Local(pacer) => pacer.free_in(Instant::now()),
            Pacing::Shared(shared) => shared.free_in().await,
        }
    }

    /// Waits for `slot`'s time, and says whether it may still be used then: a shared slot
    /// woken up past its grace ([`crate::start::budget::rules::usable`]) is dropped, and the
    /// call must reserve again (used late, it could exceed the account's bucket).
    pub async fn ready(&self, slot: Slot) -> bool {
        match self {
            Pacing::Local(_) => {
                slot.until_due().await;
                true
            }
            Pacing::Shared(shared) => shared.ready(slot).await,
        }
    }

    /// Gives back a slot that was reserved and not used (its call was not made), so that the
    /// next call may use it.
    pub async fn put_back(&self, slot: Slot) {
        match self {
            Pacing::Local(pacer) => pacer.put_back(slot, Instant::now()),
            Pacing::Shared(shared) => shared.put_back(slot).await,
        }
    }

    /// Reports a successful call made in `slot`.
    pub async fn on_success(&self, slot: Slot) {
        match self {
            Pacing::Local(pacer) => pacer.on_success(slot, Instant::now()),
            Pacing::Shared(shared) => shared.on_success(slot).await,
        }
    }

    /// Reports a throttle of the call made in `slot`.
    pub async fn on_throttle(&self, slot: Slot) {
        match self {
            Pacing::Local(pacer) => pacer.on_throttle(slot, Instant::now()),
            Pacing::Shared(shared) => shared.on_throttle(slot).await,
        }
    }

    /// The local pacer: the instance's own (static split), or the shared mode's fallback.
    pub fn local(&self) -> &Pacer {
        match self {
            Pacing::Local(pacer) => pacer,
            Pacing::Shared(shared) => shared.fallback(),
        }
    }
}
