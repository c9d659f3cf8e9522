//! `sfn-pacer-quota cap`: the cap on running executions (`MAX_RUNNING_EXECUTIONS`) in the
//! coordination table: `show` (its size, the slots held, the oldest holders and when each is next
//! checked or expires, the waiting line) and `set` (a live change: `sfn_pacer`'s `change_cap`,
//! which freezes the shards until the slots held fit the new cap, then splits the room; lowering
//! it below the slots held stops new starts until enough executions end, and stops none).

use sfn_pacer::start::running::{change_cap, settings_pk, CapView, Holder, RunningStore};

use quota_sync::failure::{store_failure, Failure};

/// The most holders `show` reads from the index to find the oldest.
pub const HOLDERS_READ: usize = 1_000;
/// The largest cap (`MAX_RUNNING_EXECUTIONS`' bound).
pub const MAX_CAP: u64 = sfn_pacer::config::MAX_RUNNING_EXECUTIONS as u64;

/// What `show` read: the cap, and the oldest of the held slots it read.
#[derive(Debug, Clone)]
pub struct CapShow {
    /// Settings, shards, line.
    pub view: CapView,
    /// The oldest holders, oldest first (at most the number asked).
    pub oldest: Vec<Holder>,
    /// Holders read from the index (at most [`HOLDERS_READ`]).
    pub read: usize,
}

/// Reads the cap under `key` and its `oldest` oldest holders.
pub async fn show(store: &dyn RunningStore, table: &str, key: &str, oldest: usize) -> Result<CapShow, Failure> {
    let view = store
        .view(key)
        .await
        .map_err(|e| store_failure("GetItem", table, e))?
        .ok_or_else(|| Failure::NoCap {
            table: table.to_string(),
            key: key.to_string(),
        })?;
    let mut holders = store
        .due(key, u64::MAX, HOLDERS_READ)
        .await
        .map_err(|e| store_failure("Query", table, e))?;
    let read = holders.len();
    holders.sort_by_key(|h| (h.taken_at_ms, h.name.clone()));
    holders.truncate(oldest);
    Ok(CapShow {
        view,
        oldest: holders,
        read,
    })
}

/// Checks `--max`: 1 to [`MAX_CAP`].
pub fn validate_cap(cap: u64) -> Result<u64, Failure> {
    match (1..=MAX_CAP).contains(&cap) {
        true => Ok(cap),
        false => Err(Failure::Usage(format!(
            "--max must be 1 to {MAX_CAP} running executions, got {cap}"
        ))),
    }
}

/// Sets the cap under `key` to `cap` (creating it if absent): the cap before (`None`: created) and after.
pub async fn set(
    store: &dyn RunningStore,
    table: &str,
    key: &str,
    cap: u64,
) -> Result<(Option<CapView>, CapView), Failure> {
    let before = store.view(key).await.map_err(|e| store_failure("GetItem", table, e))?;
    let after = change_cap(store, key, validate_cap(cap)?)
        .await
        .map_err(|e| store_failure("TransactWriteItems", table, e))?;
    Ok((before, after))
}

/// Seconds from `now_s` to `at_s`, signed, as text ("in 42 s", "12 s ago").
fn relative(at_s: u64, now_s: u64) -> String {
    match at_s >= now_s {
        true => format!("in {} s", at_s - now_s),
        false => format!("{} s ago", now_s - at_s),
    }
}

/// `show`'s text.
pub fn render_text(table: &str, key: &str, shown: &CapShow, now_ms: u64) -> String {
    let view = &shown.view;
    let s = &view.settings;
    let now_s = now_ms / 1000;
    let mut out = format!("cap {} in table {table}\n", settings_pk(key));
    let mut line = |name: &str, value: String| out.push_str(&format!("  {name:<16}{value}\n"));
    line("cap", format!("{} running executions", s.cap));
    line("held", format!("{} slots ({} free)", view.held(), view.room()));
    if view.held() > s.cap {
        line(
            "above the cap",
            format!("{}: no new start until that many more end", view.held() - s.cap),
        );
    }
    line(
        "shards",
        format!(
            "{} (held per shard: {:?})",
            s.shards,
            view.shards.iter().map(|h| h.held).collect::<Vec<_>>()
        ),
    );
    let (freed, busy_ms) = view.freed();
    let mean = match freed {
        0 => "none ended yet".to_string(),
        n => format!("{:.1} s held on average", busy_ms as f64 / n as f64 / 1000.0),
    };
    line("released", format!("{freed} slots, {mean}"));
    line(
        "waiting line",
        view.line
            .filter(|l| l.tat_ms > now_ms)
            .map_or("empty".to_string(), |l| {
                format!("its last message due {}", relative(l.tat_ms / 1000, now_s))
            }),
    );
    line(
        "version",
        format!(
            "{}{}",
            s.version,
            if s.rebalance {
                " (frozen until the slots held fit the cap)"
            } else {
                ""
            }
        ),
    );
    out.push_str(&format!(
        "oldest held slots ({} of the {} read):\n",
        shown.oldest.len(),
        shown.read
    ));
    for h in &shown.oldest {
        let (what, when) = match h.express {
            true => ("expires", relative(h.check_at_s, now_s)),
            false => ("next check", relative(h.check_at_s, now_s)),
        };
        out.push_str(&format!(
            "  {}  taken {}, {what} {when}{}\n",
            h.execution_arn,
            relative(h.taken_at_ms / 1000, now_s),
            if h.attempt > 0 {
                format!(", redrive {}", h.attempt)
            } else {
                String::new()
            }
        ));
    }
    out
}

/// `show --json`'s object.
pub fn render_json(table: &str, key: &str, shown: &CapShow, now_ms: u64) -> serde_json::Value {
    let view = &shown.view;
    serde_json::json!({
        "table": table,
        "key": key,
        "pk": settings_pk(key),
        "cap": view.settings.cap,
        "held": view.held(),
        "free": view.room(),
        "shards": view.shards.iter().map(|s| serde_json::json!({"held": s.held, "cap": s.cap})).collect::<Vec<_>>(),
        "released": view.freed().0,
        "held_ms_released": view.freed().1,
        "line_due_ms": view.line.map(|l| l.tat_ms),
        "version": view.settings.version,
        "frozen": view.settings.rebalance,
        "oldest": shown.oldest.iter().map(|h| serde_json::json!({
            "execution_arn": h.execution_arn, "name": h.name, "taken_at_ms": h.taken_at_ms,
            "check_at_s": h.check_at_s, "express": h.express, "attempt": h.attempt,
        })).collect::<Vec<_>>(),
        "holders_read": shown.read,
        "now_ms": now_ms,
    })
}

/// `set`'s text: what changed, then the cap as `show` prints it.
pub fn render_set_text(table: &str, key: &str, before: Option<&CapView>, after: &CapShow, now_ms: u64) -> String {
    let cap = after.view.settings.cap;
    let head = match before {
        None => format!("created the cap: {cap} running executions\n"),
        Some(b) if after.view.held() > cap => format!(
            "set the cap {} → {cap}: {} slots are held, so no new execution starts until {} more end \
             (none is stopped)\n",
            b.settings.cap,
            after.view.held(),
            after.view.held() - cap
        ),
        Some(b) => format!(
            "set the cap {} → {cap}; running instances take slots under it at once\n",
            b.settings.cap
        ),
    };
    head + &render_text(table, key, after, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfn_pacer::start::memory::MemoryStore;
    use sfn_pacer::start::running::{seed, HolderState, Write};

    fn holder(name: &str, taken_at_ms: u64) -> Holder {
        Holder {
            scope: "m".into(),
            name: name.into(),
            shard: 0,
            state: HolderState::Held,
            attempt: 0,
            execution_arn: format!("arn:aws:states:us-east-1:1:execution:m:{name}"),
            taken_at_ms,
            check_at_s: taken_at_ms / 1000 + 300,
            express: false,
            released_at_ms: None,
        }
    }

    #[tokio::test]
    async fn show_lists_the_oldest_holders_and_set_lowers_below_the_held_without_stopping_any() {
        let store = MemoryStore::new();
        assert!(matches!(show(&store, "t", "k", 5).await, Err(Failure::NoCap { .. })));
        store.write("k", &seed(3)).await.unwrap();
        for (name, at) in [("b", 2_000_000), ("a", 1_000_000), ("c", 3_000_000)] {
            store
                .write(
                    "k",
                    &Write::Take {
                        holder: holder(name, at),
                        above_cap: false,
                    },
                )
                .await
                .unwrap();
        }
        let shown = show(&store, "t", "k", 2).await.unwrap();
        let names: Vec<&str> = shown.oldest.iter().map(|h| h.name.as_str()).collect();
        assert_eq!((names, shown.read), (vec!["a", "b"], 3));
        let text = render_text("t", "k", &shown, 3_600_000);
        assert!(text.contains("cap             3 running executions"), "{text}");
        assert!(text.contains("held            3 slots (0 free)"), "{text}");
        assert!(
            text.contains("execution:m:a  taken 2600 s ago, next check 2300 s ago"),
            "{text}"
        );
        let (before, after) = set(&store, "t", "k", 1).await.unwrap();
        assert_eq!(before.unwrap().settings.cap, 3);
        assert_eq!(
            (after.settings.cap, after.held(), after.room()),
            (1, 3, 0),
            "nothing stopped, nothing free"
        );
        let shown = show(&store, "t", "k", 10).await.unwrap();
        let text = render_set_text("t", "k", Some(&shown.view), &shown, 0);
        assert!(text.contains("no new execution starts until 2 more end"), "{text}");
        assert!(matches!(validate_cap(0), Err(Failure::Usage(m)) if m.starts_with("--max ")));
        assert!(validate_cap(MAX_CAP + 1).is_err() && validate_cap(MAX_CAP).is_ok());
    }
}
