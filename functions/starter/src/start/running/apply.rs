//! The one definition of each [`Write`]'s conditions and effects on the cap's items: what the
//! in-memory table runs, and what the DynamoDB adapter's expressions mirror (a conformance test
//! runs both).

use super::{
    holder_pk, line_pk, settings_pk, shard_pk, Found, Holder, HolderState, Item, Line, LineShape, Settings, Shard,
    Write,
};

/// One action of a write: its item, whether its condition holds on the item as it is, and the
/// item after it (`None`: deleted).
type Action = (String, Result<Option<Item>, Found>);

/// The cap's items as they are, read by partition key.
struct Items<'a> {
    key: &'a str,
    get: &'a dyn Fn(&str) -> Option<Item>,
}

impl Items<'_> {
    fn settings(&self) -> Option<Settings> {
        match (self.get)(&settings_pk(self.key)) {
            Some(Item::Settings(s)) => Some(s),
            _ => None,
        }
    }

    fn shard(&self, i: u32) -> Option<Shard> {
        match (self.get)(&shard_pk(self.key, i)) {
            Some(Item::Shard(s)) => Some(s),
            _ => None,
        }
    }

    fn holder(&self, scope: &str, name: &str) -> Option<Holder> {
        match (self.get)(&holder_pk(self.key, scope, name)) {
            Some(Item::Holder(h)) => Some(h),
            _ => None,
        }
    }

    fn line(&self) -> Option<Line> {
        match (self.get)(&line_pk(self.key)) {
            Some(Item::Line(l)) => Some(l),
            _ => None,
        }
    }

    /// The holder's action: `after` applied to it when `condition` holds on it, else refused.
    fn on_holder(
        &self,
        scope: &str,
        name: &str,
        condition: impl Fn(&Holder) -> bool,
        after: impl FnOnce(Holder) -> Option<Item>,
    ) -> Action {
        let current = self.holder(scope, name);
        let result = match current {
            Some(h) if condition(&h) => Ok(after(h)),
            found => Err(Found::Holder(found)),
        };
        (holder_pk(self.key, scope, name), result)
    }

    /// A shard's action that uncounts one held slot (`freed` and `busy_ms` added): only while
    /// it holds one.
    fn uncount(&self, i: u32, freed: u64, busy_ms: u64) -> Action {
        let after = match self.shard(i) {
            Some(s) if s.held > 0 => Ok(Some(Item::Shard(Shard {
                held: s.held - 1,
                freed: s.freed + freed,
                busy_ms: s.busy_ms.saturating_add(busy_ms),
                ..s
            }))),
            found => Err(Found::Shard(i, found)),
        };
        (shard_pk(self.key, i), after)
    }

    /// The settings' action: `after` applied to them when `condition` holds, else refused.
    fn on_settings(&self, condition: impl Fn(&Settings) -> bool, after: impl FnOnce(Settings) -> Settings) -> Action {
        let result = match self.settings() {
            Some(s) if condition(&s) => Ok(Some(Item::Settings(after(s)))),
            found => Err(Found::Settings(found)),
        };
        (settings_pk(self.key), result)
    }
}

/// A held holder on shard `i`.
fn held_on(h: &Holder, i: u32) -> bool {
    h.state == HolderState::Held && h.shard == i
}

impl Write {
    /// The actions of this write on the items as they are (`get` by partition key), in order.
    pub fn actions(&self, key: &str, get: &dyn Fn(&str) -> Option<Item>) -> Vec<Action> {
        let items = Items { key, get };
        match self {
            Write::Seed { settings, shards } => seed(&items, settings, shards),
            Write::Take { holder, above_cap } => take(&items, holder, *above_cap),
            Write::GiveBack {
                scope,
                name,
                shard,
                taken_at_ms,
            } => {
                let ours = |h: &Holder| held_on(h, *shard) && h.taken_at_ms == *taken_at_ms;
                vec![
                    items.on_holder(scope, name, ours, |_| None),
                    items.uncount(*shard, 0, 0),
                ]
            }
            Write::Release {
                scope,
                name,
                shard,
                attempt,
                busy_ms,
                released_at_ms,
            } => {
                let releasable = |h: &Holder| held_on(h, *shard) && h.attempt <= *attempt;
                let tombstone = |h: Holder| {
                    Some(Item::Holder(Holder {
                        state: HolderState::Released,
                        released_at_ms: Some(*released_at_ms),
                        ..h
                    }))
                };
                vec![
                    items.on_holder(scope, name, releasable, tombstone),
                    items.uncount(*shard, 1, *busy_ms),
                ]
            }
            Write::Extend {
                scope,
                name,
                check_at_s,
                next_check_at_s,
                attempt,
            } => {
                let due = |h: &Holder| h.state == HolderState::Held && h.check_at_s == *check_at_s;
                let extended = |h: Holder| {
                    Some(Item::Holder(Holder {
                        check_at_s: *next_check_at_s,
                        attempt: *attempt,
                        ..h
                    }))
                };
                vec![items.on_holder(scope, name, due, extended)]
            }
            Write::SetCap { version, cap, shards } => set_cap(&items, *version, *cap, *shards),
            Write::Rebalance { version, held, caps } => rebalance(&items, *version, held, caps),
            Write::Line(shape) => vec![line(&items, shape)],
        }
    }

    /// Applies this write as the store does: every action's item after it (`None`: deleted), or,
    /// when a condition fails, what the failed actions found (nothing is written).
    pub fn apply(
        &self,
        key: &str,
        get: &dyn Fn(&str) -> Option<Item>,
    ) -> Result<Vec<(String, Option<Item>)>, Vec<Found>> {
        let actions = self.actions(key, get);
        let found: Vec<Found> = actions.iter().filter_map(|(_, a)| a.as_ref().err().cloned()).collect();
        if !found.is_empty() {
            return Err(found);
        }
        Ok(actions
            .into_iter()
            .filter_map(|(pk, a)| a.ok().map(|item| (pk, item)))
            .collect())
    }
}

/// [`Write::Seed`]: the settings and every shard, each only if absent.
fn seed(items: &Items, settings: &Settings, shards: &[Shard]) -> Vec<Action> {
    let mut out = vec![(
        settings_pk(items.key),
        match items.settings() {
            None => Ok(Some(Item::Settings(settings.clone()))),
            found => Err(Found::Settings(found)),
        },
    )];
    for (i, s) in (0u32..).zip(shards) {
        let result = match items.shard(i) {
            None => Ok(Some(Item::Shard(*s))),
            found => Err(Found::Shard(i, found)),
        };
        out.push((shard_pk(items.key, i), result));
    }
    out
}

/// [`Write::Take`]: the holder if absent (or a tombstone of an earlier attempt), counted on its
/// shard while it has room (or `above_cap`).
fn take(items: &Items, new: &Holder, above_cap: bool) -> Vec<Action> {
    let current = items.holder(&new.scope, &new.name);
    let free = current
        .as_ref()
        .is_none_or(|h| h.state == HolderState::Released && h.attempt < new.attempt);
    let holder = match free {
        true => Ok(Some(Item::Holder(new.clone()))),
        false => Err(Found::Holder(current)),
    };
    let counted = match items.shard(new.shard) {
        Some(s) if above_cap || s.held < s.cap => Ok(Some(Item::Shard(Shard { held: s.held + 1, ..s }))),
        found => Err(Found::Shard(new.shard, found)),
    };
    vec![
        (holder_pk(items.key, &new.scope, &new.name), holder),
        (shard_pk(items.key, new.shard), counted),
    ]
}

/// [`Write::SetCap`]: the new cap and shard count (version + 1, rebalance pending), every shard
/// frozen (`cap` 0, created if absent).
fn set_cap(items: &Items, version: u64, cap: u64, shards: u32) -> Vec<Action> {
    let mut out = vec![items.on_settings(
        |s| s.version == version,
        |s| Settings {
            cap,
            shards,
            version: s.version + 1,
            rebalance: true,
        },
    )];
    for i in 0..shards {
        let frozen = Shard {
            cap: 0,
            ..items.shard(i).unwrap_or_default()
        };
        out.push((shard_pk(items.key, i), Ok(Some(Item::Shard(frozen)))));
    }
    out
}

/// [`Write::Rebalance`]: each shard's new cap, while it holds no more than was read.
fn rebalance(items: &Items, version: u64, held: &[u64], caps: &[u64]) -> Vec<Action> {
    let mut out = vec![items.on_settings(
        |s| s.version == version && s.rebalance,
        |s| Settings {
            version: s.version + 1,
            rebalance: false,
            ..s
        },
    )];
    for (i, (&read, &cap)) in (0u32..).zip(held.iter().zip(caps)) {
        let result = match items.shard(i) {
            Some(s) if s.held <= read => Ok(Some(Item::Shard(Shard { cap, ..s }))),
            found => Err(Found::Shard(i, found)),
        };
        out.push((shard_pk(items.key, i), result));
    }
    out
}

/// [`Write::Line`]: the line's `tat`, from now when it is in the past, or extended.
fn line(items: &Items, shape: &LineShape) -> Action {
    let after = match (shape, items.line()) {
        (LineShape::FromNow { now_ms, tat_ms }, c) if c.is_none_or(|l| l.tat_ms < *now_ms) => {
            Ok(Line { tat_ms: *tat_ms })
        }
        (LineShape::Extend { now_ms, delta_ms }, Some(l)) if l.tat_ms >= *now_ms => Ok(Line {
            tat_ms: l.tat_ms.saturating_add(*delta_ms),
        }),
        (_, found) => Err(Found::Line(found)),
    };
    (line_pk(items.key), after.map(|l| Some(Item::Line(l))))
}
