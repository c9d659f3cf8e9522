//! The cap on running executions (`MAX_RUNNING_EXECUTIONS`): a slot per execution, taken right
//! before its StartExecution call and held by the execution, named, until it ends.
//!
//! ## The items (coordination table, partition key `pk` only, all under the cap's key `K`)
//! - `running#K` ([`Settings`]): the cap `C`, the number of shards `S` ever used, a `version`, and
//!   `rebalance` (set while the shards' caps wait for a [`Write::Rebalance`] after a change).
//! - `running#K#shard#i`, `i < S` ([`Shard`]): `held`, `cap` (this shard's share of `C`),
//!   `freed` (releases so far, monotonic) and `busy_ms` (the held time of those releases, from the
//!   take to the release, monotonic: the mean time a slot is held is `Σ busy_ms / Σ freed`). `S = clamp(⌈C / 16⌉, 1, 64)` ([`shards_for`]).
//! - `running#K#holder#<scope>#<name>` ([`Holder`]): the execution's slot: its shard, `state`
//!   (held, or released: a tombstone), the redrive `attempt` it is held for, its ARN, `taken_at`
//!   (ms) and `check_at` (s: when the reclaim looks at it). While held, the index key `due` =
//!   `running#K#due#<n>` (n: a hash of the name, mod [`DUE_PARTITIONS`]) puts it in the sparse index
//!   [`DUE_INDEX`] (`due`, `check_at`), where the reclaim finds holders whose check is due without
//!   a scan. A tombstone has no `due`, and `expires_at` (the table's TTL attribute) 14 days after
//!   its release (the redrive window); a held holder never has `expires_at`.
//! - `running#K#line` ([`Line`]): the waiting line's `tat` (ms), see [`line`].
//!
//! ## Invariants
//! - Every held slot is counted by exactly one held holder: a take writes the holder and counts
//!   the slot in one transaction, a release or a give-back ends both in one transaction.
//! - A take is refused while its shard holds `cap` slots, so at most `C` slots are held, as long
//!   as every shard holds no more than its cap. That holds always but in two cases: a redriven
//!   execution re-takes its slot above the cap (what runs is counted), and a cap lowered below
//!   the slots held. A change of the cap freezes every shard (`cap` 0, no take) until the slots
//!   held fit the new cap; then [`Write::Rebalance`] gives each shard its held slots plus a share
//!   of the room, conditioned on no shard having gained a slot since it was read.
//! - Taking is idempotent by name: a holder that exists refuses the take (a redelivered message's
//!   execution keeps its one slot); a tombstone refuses it too (the execution ended: it must not
//!   start again). Releasing is idempotent: only a held holder of an attempt up to the event's is
//!   released; a duplicate or late event frees nothing.
//! - Nothing leaks: every held holder is in the index with a `check_at`, so the reclaim finds it.
//!
//! Each [`Write`] is one DynamoDB call (a transaction when it touches several items), all or
//! nothing; [`Write::apply`] ([`apply`]) is the one definition of its conditions and effects, which the
//! in-memory table runs and the DynamoDB adapter's expressions mirror.

pub mod apply;
pub mod cap;
pub mod describe;
pub mod line;
pub mod reclaim;
pub mod release;

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::start::table::StoreError;

/// The most shards a cap is split into.
pub const MAX_SHARDS: u32 = 64;
/// A shard is added for every this many slots of the cap (see [`shards_for`]).
pub const SLOTS_PER_SHARD: u64 = 16;
/// The partitions of the sparse index's key `due` (holders spread by a hash of their name).
pub const DUE_PARTITIONS: u32 = 16;
/// The sparse index of held holders: partition key `due` (S), sort key `check_at` (N).
pub const DUE_INDEX: &str = "due-index";
/// How long a released holder is kept (its `expires_at`): Step Functions redrives an execution
/// within 14 days, and EventBridge retries an event for up to a day.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(14 * 86_400);
/// The longest time between two checks of a held slot.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(86_400);

/// The number of shards for a cap of `cap` slots: `clamp(⌈cap / 16⌉, 1, 64)`. A take and a release
/// are two transactional writes (2 write units each) on one shard: at `r` starts per second the
/// busiest shard takes about `4 r / S` write units per second, under half of DynamoDB's 1,000 per
/// item at 300 starts/s for every cap from 33 slots up (shorter executions cannot reach 300/s:
/// the rate is at most `C / duration`).
pub fn shards_for(cap: u64) -> u32 {
    let shards = cap.div_ceil(SLOTS_PER_SHARD).clamp(1, u64::from(MAX_SHARDS));
    shards as u32
}

/// `total` split into `parts` shares that differ by at most one, the larger first.
pub fn shares(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// The partition key of the cap's settings.
pub fn settings_pk(key: &str) -> String {
    format!("running#{key}")
}

/// The partition key of shard `index`.
pub fn shard_pk(key: &str, index: u32) -> String {
    format!("running#{key}#shard#{index}")
}

/// The partition key of the holder of execution `name` of the state machine `scope`.
pub fn holder_pk(key: &str, scope: &str, name: &str) -> String {
    format!("running#{key}#holder#{scope}#{name}")
}

/// The partition key of the waiting line.
pub fn line_pk(key: &str) -> String {
    format!("running#{key}#line")
}

/// The index key of a held holder: one of [`DUE_PARTITIONS`] values, by a hash of its name.
pub fn due_key(key: &str, name: &str) -> String {
    due_index_key(key, due_partition(name))
}

/// The index key of partition `partition` of the index.
pub fn due_index_key(key: &str, partition: u32) -> String {
    format!("running#{key}#due#{partition}")
}

/// The index partition of the execution `name`.
pub fn due_partition(name: &str) -> u32 {
    let digest = Sha256::digest(name.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % DUE_PARTITIONS
}

/// The ARN a Standard execution named `name` of `state_machine_arn` (or of its version or alias)
/// gets: `…:execution:<state machine name>:<name>`.
pub fn execution_arn(state_machine_arn: &str, name: &str) -> String {
    match state_machine_arn.split_once(":stateMachine:") {
        Some((prefix, rest)) => {
            let machine = rest.split(':').next().unwrap_or(rest);
            format!("{prefix}:execution:{machine}:{name}")
        }
        None => format!("{state_machine_arn}:{name}"),
    }
}

/// The cap's settings item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The cap, slots.
    pub cap: u64,
    /// Shards ever used (shard items `0..shards` exist).
    pub shards: u32,
    /// Bumped by every change.
    pub version: u64,
    /// The shards' caps are frozen at 0 until a rebalance (after a change of the cap).
    pub rebalance: bool,
}

/// One shard of the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shard {
    /// Slots held.
    pub held: u64,
    /// This shard's share of the cap: a take is refused while `held ≥ cap`.
    pub cap: u64,
    /// Releases so far (monotonic; give-backs of unused slots are not releases).
    pub freed: u64,
    /// The held time of those releases, milliseconds (monotonic).
    pub busy_ms: u64,
}

/// Whether a holder's slot is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderState {
    /// The execution holds its slot.
    Held,
    /// The slot was released: a tombstone, until `expires_at`.
    Released,
}

/// An execution's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The state machine's name (as claims scope their names).
    pub scope: String,
    /// The execution's name.
    pub name: String,
    /// The shard that counts it.
    pub shard: u32,
    /// Held or released.
    pub state: HolderState,
    /// The redrive count it is held for (0: the first run).
    pub attempt: u32,
    /// The execution's ARN (derived at take: [`execution_arn`]).
    pub execution_arn: String,
    /// When the slot was taken, milliseconds since the epoch.
    pub taken_at_ms: u64,
    /// When the reclaim looks at it, seconds since the epoch.
    pub check_at_s: u64,
    /// An Express execution: it cannot be described; it is released at its first check.
    pub express: bool,
    /// When it was released, milliseconds since the epoch (tombstones).
    pub released_at_ms: Option<u64>,
}

impl Holder {
    /// The tombstone's `expires_at` (seconds since the epoch); `None` while held.
    pub fn expires_at_s(&self) -> Option<u64> {
        match self.state {
            HolderState::Held => None,
            HolderState::Released => self.released_at_ms.map(|ms| ms / 1000 + TOMBSTONE_TTL.as_secs()),
        }
    }
}

/// The waiting line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// When the last message in line is due, milliseconds since the epoch.
    pub tat_ms: u64,
}

/// An item of the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `running#K`.
    Settings(Settings),
    /// `running#K#shard#i`.
    Shard(Shard),
    /// `running#K#holder#…`.
    Holder(Holder),
    /// `running#K#line`.
    Line(Line),
}

/// The shapes of a line update (as the budget's lease: no prior read; a refusal returns the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineShape {
    /// `tat < now` (or no line): `SET tat = tat_ms`.
    FromNow {
        /// Now, ms.
        now_ms: u64,
        /// `now + k / λ̂`, ms.
        tat_ms: u64,
    },
    /// `tat ≥ now`: `SET tat = tat + delta_ms`.
    Extend {
        /// Now, ms.
        now_ms: u64,
        /// `k / λ̂`, ms.
        delta_ms: u64,
    },
}

/// One write to the cap's items: one DynamoDB call, all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Creates the settings and shards `0..settings.shards`, each only if absent.
    Seed {
        /// The settings (version 1).
        settings: Settings,
        /// The shards, caps summing to the cap.
        shards: Vec<Shard>,
    },
    /// Puts the holder (if absent, or a tombstone of an earlier attempt) and counts it on its
    /// shard: only while `held < cap`, unless `above_cap` (a redriven execution re-takes its slot).
    Take {
        /// The holder, held.
        holder: Holder,
        /// Count it even at the cap.
        above_cap: bool,
    },
    /// Gives back an unused slot: deletes the holder (held, taken at `taken_at_ms` on `shard`) and
    /// uncounts it. Not a release: `freed` stays.
    GiveBack {
        /// The state machine's name.
        scope: String,
        /// The execution's name.
        name: String,
        /// Its shard.
        shard: u32,
        /// Its `taken_at`: only this take's holder is deleted.
        taken_at_ms: u64,
    },
    /// Releases a held slot (of an attempt up to `attempt`): the holder becomes a tombstone, the
    /// shard counts one slot fewer, one more freed and `busy_ms` more held time.
    Release {
        /// The state machine's name.
        scope: String,
        /// The execution's name.
        name: String,
        /// Its shard.
        shard: u32,
        /// The event's redrive count: a holder of a later attempt is not released.
        attempt: u32,
        /// How long the slot was held, ms.
        busy_ms: u64,
        /// When, ms since the epoch.
        released_at_ms: u64,
    },
    /// Moves a held holder's next check (from `check_at_s` as read), and sets its attempt.
    Extend {
        /// The state machine's name.
        scope: String,
        /// The execution's name.
        name: String,
        /// `check_at` as read.
        check_at_s: u64,
        /// The next check.
        next_check_at_s: u64,
        /// The redrive count it is held for.
        attempt: u32,
    },
    /// The operator's change of the cap (from the settings of `version`): sets `cap` and `shards`
    /// (at least as many as before), and freezes every shard (`cap` 0, created if absent) until
    /// a rebalance.
    SetCap {
        /// The settings' version as read.
        version: u64,
        /// The new cap.
        cap: u64,
        /// The new number of shards.
        shards: u32,
    },
    /// Ends a freeze: each shard `i` gets `caps[i]` (at least its held slots), conditioned on it
    /// holding at most `held[i]` (as read: no take since).
    Rebalance {
        /// The settings' version as read.
        version: u64,
        /// Held slots per shard, as read.
        held: Vec<u64>,
        /// The new caps per shard (summing to the cap).
        caps: Vec<u64>,
    },
    /// Puts messages in the waiting line.
    Line(LineShape),
}

/// What a refused write found: the items whose condition failed, as they are (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The settings.
    Settings(Option<Settings>),
    /// A shard, by index.
    Shard(u32, Option<Shard>),
    /// The holder.
    Holder(Option<Holder>),
    /// The line.
    Line(Option<Line>),
}

/// What the store did with a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Applied; a line update returns the line after it.
    Applied(Option<Line>),
    /// A condition failed: nothing was written.
    Refused(Vec<Found>),
}

/// The cap as one instance last read it: settings, every shard, the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapView {
    /// The settings.
    pub settings: Settings,
    /// Shards `0..settings.shards` (a missing one reads as empty with no cap).
    pub shards: Vec<Shard>,
    /// The line (`None`: never used).
    pub line: Option<Line>,
}

impl CapView {
    /// Slots held, all shards together.
    pub fn held(&self) -> u64 {
        self.shards.iter().map(|s| s.held).sum()
    }

    /// Slots free (shards at or over their cap count none).
    pub fn room(&self) -> u64 {
        self.shards.iter().map(|s| s.cap.saturating_sub(s.held)).sum()
    }

    /// Releases so far, and their held time (ms), all shards together.
    pub fn freed(&self) -> (u64, u64) {
        self.shards
            .iter()
            .fold((0, 0), |(f, b), s| (f + s.freed, b.saturating_add(s.busy_ms)))
    }
}

/// The writes that create a cap of `cap` slots.
pub fn seed(cap: u64) -> Write {
    let shards = shards_for(cap);
    Write::Seed {
        settings: Settings {
            cap,
            shards,
            version: 1,
            rebalance: false,
        },
        shards: shares(cap, shards)
            .into_iter()
            .map(|cap| Shard {
                cap,
                ..Shard::default()
            })
            .collect(),
    }
}

/// The operator's change of the cap to `cap` slots: a freeze, followed by a rebalance.
pub fn set_cap(settings: &Settings, cap: u64) -> Write {
    Write::SetCap {
        version: settings.version,
        cap,
        shards: settings.shards.max(shards_for(cap)),
    }
}

/// The rebalance that ends a freeze, when the slots held fit the cap: each shard keeps its held
/// slots and gets an even share of the room. `None` when there is no freeze, or the slots held
/// still exceed the cap (no take until enough executions end).
pub fn rebalance(view: &CapView) -> Option<Write> {
    let s = &view.settings;
    let held = view.held();
    if !s.rebalance || held > s.cap || view.shards.len() != s.shards as usize {
        return None;
    }
    let held: Vec<u64> = view.shards.iter().map(|s| s.held).collect();
    let room = shares(s.cap - held.iter().sum::<u64>(), s.shards);
    Some(Write::Rebalance {
        version: s.version,
        caps: held.iter().zip(room).map(|(h, r)| h + r).collect(),
        held,
    })
}

/// Tries at an operator's change of the cap, each after a concurrent change refused it.
const CHANGE_ATTEMPTS: usize = 5;

/// The operator's change of the cap `key` in `store` to `cap` slots (what `sfn-pacer-quota` runs):
/// creates the cap if it does not exist; else freezes its shards with the new cap and, when the
/// slots held fit it, rebalances them at once (otherwise the first instance that reads the cap
/// once enough executions have ended does). Nothing running is stopped. Returns the cap after it.
pub async fn change_cap(store: &dyn RunningStore, key: &str, cap: u64) -> Result<CapView, StoreError> {
    for _ in 0..CHANGE_ATTEMPTS {
        let write = match store.view(key).await? {
            None => seed(cap),
            Some(view) => set_cap(&view.settings, cap),
        };
        if let Written::Refused(_) = store.write(key, &write).await? {
            continue;
        }
        let view = store
            .view(key)
            .await?
            .ok_or_else(|| StoreError::unknown("the cap's settings vanished"))?;
        return match rebalance(&view) {
            Some(write) => {
                store.write(key, &write).await?;
                store
                    .view(key)
                    .await?
                    .ok_or_else(|| StoreError::unknown("the cap's settings vanished"))
            }
            None => Ok(view),
        };
    }
    Err(StoreError::unknown(
        "the cap kept changing under this change: try again",
    ))
}

/// The cap's storage, behind a narrow trait (the DynamoDB adapter is in [`crate::aws::dynamo`]).
#[async_trait]
pub trait RunningStore: Send + Sync {
    /// Applies `write` if its conditions hold, all or nothing.
    async fn write(&self, key: &str, write: &Write) -> Result<Written, StoreError>;
    /// The settings, every shard and the line (strongly consistent); `None` when the cap has no
    /// settings yet.
    async fn view(&self, key: &str) -> Result<Option<CapView>, StoreError>;
    /// One holder (strongly consistent).
    async fn holder(&self, key: &str, scope: &str, name: &str) -> Result<Option<Holder>, StoreError>;
    /// Held holders whose check is due (`check_at ≤ now_s`), at most `limit`, by partition of
    /// the index, each partition's earliest check first (the index is eventually consistent:
    /// a caller conditions what it writes on what it read).
    async fn due(&self, key: &str, now_s: u64, limit: usize) -> Result<Vec<Holder>, StoreError>;
}

#[cfg(test)]
pub(crate) mod tests;
