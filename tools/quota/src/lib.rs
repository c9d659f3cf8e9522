//! `sfn-pacer-quota`'s logic, behind the [`Store`] trait so that it runs against the in-memory
//! store in unit tests and against DynamoDB in the binary: the validation of the operator's
//! values, `show`'s rendering (text and JSON), `set` (read, then create or `SetLimits`), and
//! `sync`'s rendering (the sync itself is `quota_sync`'s, shared with the scheduled Lambda).
//!
//! The budget is the GCRA bucket of `sfn_pacer::start::budget`: the bucket holds
//! `B_eff − r_eff × max(0, tat − now)` slots now, clamped to `[0, B_eff]`, with the effective
//! burst and rate of [`BudgetState::effective_burst`] and [`BudgetState::effective_rate`].

pub mod cap;

use sfn_pacer::aws::dynamo::budget_pk;
use sfn_pacer::config::{WorkflowType, BURST_RESERVE};
use sfn_pacer::start::budget::{BudgetState, Store, Update};

use quota_sync::failure::store_failure;
pub use quota_sync::failure::{one_line, Failure};
pub use quota_sync::sync::number;
use quota_sync::sync::{Action, SyncOutcome};
pub use quota_sync::write::SetOutcome;
use quota_sync::write::{write_budget, Wrote};
use sfn_pacer::start::clock::system_seconds;

/// The program's name, the prefix of every message on stderr.
pub const TOOL: &str = "sfn-pacer-quota";

/// The longest quota key the function accepts (its `QUOTA_KEY` check).
pub const MAX_KEY_CHARS: usize = 200;

/// A rendered clap error on one line: "error: " and the usage and help hints dropped, the
/// rest joined ("the following required arguments were not provided: --table <TABLE>").
pub fn usage_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|line| {
            !(line.is_empty()
                || line.starts_with("Usage:")
                || line.starts_with("For more information")
                || line.starts_with("tip:"))
        })
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a quota key as the function does (`QUOTA_KEY`).
pub fn validate_key(key: &str) -> Result<(), Failure> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(Failure::Usage(format!(
            "--key must be 1 to {MAX_KEY_CHARS} characters, without control characters, got {key:?}"
        )));
    }
    Ok(())
}

/// The limits `set` was asked for: either or both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `--rate`, slots (starts) per second.
    pub rate_per_second: Option<f64>,
    /// `--burst`, slots.
    pub burst: Option<f64>,
}

impl Limits {
    /// Checks `--rate` and `--burst`: at least one given; the rate finite and > 0; the burst
    /// finite and ≥ 1.
    pub fn new(rate_per_second: Option<f64>, burst: Option<f64>) -> Result<Limits, Failure> {
        if rate_per_second.is_none() && burst.is_none() {
            return Err(Failure::Usage(
                "set needs --rate, --burst or both (the one left out keeps its value)".into(),
            ));
        }
        if let Some(rate) = rate_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(Failure::Usage(format!(
                    "--rate must be a finite number of starts per second greater than 0, got {rate}"
                )));
            }
        }
        if let Some(burst) = burst {
            if !(burst.is_finite() && burst >= 1.0) {
                return Err(Failure::Usage(format!(
                    "--burst must be a finite number of slots of at least 1, got {burst}"
                )));
            }
        }
        Ok(Limits { rate_per_second, burst })
    }

    /// The limits to write over `current` (`None`: no budget yet, so both are needed).
    fn resolve(&self, current: Option<&BudgetState>) -> Result<(f64, f64), Failure> {
        let rate = self.rate_per_second.or(current.map(|c| c.rate_per_second));
        let burst = self.burst.or(current.map(|c| c.burst));
        match (rate, burst) {
            (Some(rate), Some(burst)) => Ok((rate, burst)),
            (None, _) => Err(Failure::Usage(
                "there is no budget yet, so --rate is needed along with --burst to create it".into(),
            )),
            (_, None) => Err(Failure::Usage(
                "there is no budget yet, so --burst is needed along with --rate to create it".into(),
            )),
        }
    }
}

/// Reads the budget under `key`; `NoBudget` when there is none.
pub async fn show(store: &dyn Store, table: &str, key: &str) -> Result<BudgetState, Failure> {
    match store.get(key).await {
        Ok(Some(state)) => Ok(state),
        Ok(None) => Err(Failure::NoBudget {
            table: table.to_string(),
            key: key.to_string(),
        }),
        Err(e) => Err(store_failure("GetItem", table, e)),
    }
}

/// Sets the budget's limits: reads it, fills the limit not given from it, and writes
/// `SetLimits` (which keeps the bucket's level and bumps the version, so every instance's next
/// lease uses the new limits; it is a compare-and-set on the budget's `tat`, so a lease in
/// between makes it read and try again);
/// creates it with `BudgetState::new(rate, burst)` when there is none. A create that loses to
/// an instance creating it at the same moment becomes a `SetLimits`, and a `SetLimits` on an
/// item deleted meanwhile becomes a create.
pub async fn set(store: &dyn Store, table: &str, key: &str, limits: Limits) -> Result<SetOutcome, Failure> {
    let wrote = write_budget(store, table, key, |current| {
        let (rate_per_second, burst) = limits.resolve(current)?;
        Ok(Some(match current {
            None => Update::Create(BudgetState::new(rate_per_second, burst)),
            Some(state) => state.plan_set_limits(rate_per_second, burst, system_seconds()),
        }))
    })
    .await?;
    match wrote {
        Wrote::Applied(outcome) => Ok(outcome),
        Wrote::Nothing(_) => Err(Failure::Unexpected("set wrote nothing".into())),
    }
}

/// Slots the bucket holds at `now` (seconds since the epoch):
/// `B_eff − r_eff × max(0, tat − now)`, clamped to `[0, B_eff]`.
pub fn slots_now(state: &BudgetState, now: f64) -> f64 {
    let burst = state.effective_burst();
    (burst - state.effective_rate() * (state.tat - now).max(0.0)).clamp(0.0, burst)
}

/// `show`'s text: one field a line, each with its unit.
pub fn render_text(table: &str, key: &str, state: &BudgetState, now: f64) -> String {
    let effective_burst = state.effective_burst();
    let mut out = format!("budget {} in table {table}\n", budget_pk(key));
    let mut line = |name: &str, value: String| out.push_str(&format!("  {name:<16}{value}\n"));
    line("rate", format!("{} starts/s", number(state.rate_per_second)));
    line("burst", format!("{} slots", number(state.burst)));
    line(
        "factor",
        format!("{} (shared, adapts to throttles)", number(state.factor)),
    );
    line(
        "effective rate",
        format!("{} starts/s (rate × factor)", number(state.budget_rate())),
    );
    line(
        "effective burst",
        format!(
            "{} slots (burst less {} ms of refill)",
            number(effective_burst),
            BURST_RESERVE.as_millis()
        ),
    );
    line(
        "slots now",
        format!("{} of {} slots", number(slots_now(state, now)), number(effective_burst)),
    );
    line("version", state.version.to_string());
    if state.shards > 1 {
        // Spread over several items (budget::shards): "slots now" is this item's share.
        line(
            "items",
            format!(
                "{} (each holds 1/{} of the rate and burst; slots now: this one's share)",
                state.shards, state.shards
            ),
        );
    }
    out
}

/// `show --json`'s object.
pub fn render_json(table: &str, key: &str, state: &BudgetState, now: f64) -> serde_json::Value {
    serde_json::json!({
        "table": table,
        "key": key,
        "pk": budget_pk(key),
        "rate_per_second": state.rate_per_second,
        "burst": state.burst,
        "factor": state.factor,
        "effective_rate_per_second": state.budget_rate(),
        "effective_burst": state.effective_burst(),
        "slots_now": slots_now(state, now),
        "version": state.version,
        "items": state.shards,
        "tat": state.tat,
        "now": now,
    })
}

/// `set`'s text: what changed, then the budget as `show` prints it.
pub fn render_set_text(table: &str, key: &str, outcome: &SetOutcome, now: f64) -> String {
    let after = &outcome.after;
    let head = match &outcome.before {
        None => format!(
            "created the budget: rate {} starts/s, burst {} slots\n",
            number(after.rate_per_second),
            number(after.burst)
        ),
        Some(before) => format!(
            "set rate {} → {} starts/s, burst {} → {} slots (version {} → {}); \
             running instances use them from their next lease\n",
            number(before.rate_per_second),
            number(after.rate_per_second),
            number(before.burst),
            number(after.burst),
            before.version,
            after.version
        ),
    };
    head + &render_text(table, key, after, now)
}

/// `set --json`'s object: `show --json`'s, with `created` and `previous` (rate, burst, version
/// before the write; `null` when created).
pub fn render_set_json(table: &str, key: &str, outcome: &SetOutcome, now: f64) -> serde_json::Value {
    let mut value = render_json(table, key, &outcome.after, now);
    value["created"] = outcome.created().into();
    value["previous"] = match &outcome.before {
        None => serde_json::Value::Null,
        Some(before) => serde_json::json!({
            "rate_per_second": before.rate_per_second,
            "burst": before.burst,
            "version": before.version,
        }),
    };
    value
}

/// The workflow type's name in messages.
fn workflow_name(workflow_type: WorkflowType) -> &'static str {
    match workflow_type {
        WorkflowType::Standard => "Standard",
        WorkflowType::Express => "Express",
    }
}

/// `sync`'s text: the quota and where each value came from, the target, what was done, then
/// the budget as `show` prints it.
pub fn render_sync_text(
    table: &str,
    key: &str,
    workflow_type: WorkflowType,
    outcome: &SyncOutcome,
    now: f64,
) -> String {
    let quota = &outcome.quota;
    let mut out = format!(
        "StartExecution quota of {} workflows (this account and region)\n",
        workflow_name(workflow_type)
    );
    let mut line = |name: &str, value: String| out.push_str(&format!("  {name:<16}{value}\n"));
    for (name, reading, unit) in [
        ("bucket", &quota.bucket, "starts"),
        ("refill", &quota.refill, "starts/s"),
    ] {
        let from = reading.source.describe();
        line(name, format!("{} {unit}, from {from}", number(reading.value)));
    }
    for note in &quota.notes {
        line("not found", note.clone());
    }
    let target = format!(
        "rate {} starts/s, burst {} slots",
        number(outcome.target.rate_per_second),
        number(outcome.target.burst)
    );
    out.push_str(&format!("share {}: {target}\n", number(outcome.share)));
    let (would, dry) = if outcome.dry_run {
        ("would ", " (--dry-run: nothing written)")
    } else {
        ("", "")
    };
    let action = match (outcome.action, &outcome.before, &outcome.after) {
        (Action::Created, _, _) => format!("{would}create the budget: {target}{dry}"),
        (Action::Set, Some(before), Some(after)) => format!(
            "{would}set rate {} → {} starts/s, burst {} → {} slots (version {} → {}){}{dry}",
            number(before.rate_per_second),
            number(after.rate_per_second),
            number(before.burst),
            number(after.burst),
            before.version,
            after.version,
            if outcome.hand_changed {
                ", over a hand change (--force)"
            } else {
                ""
            }
        ),
        (Action::Kept, Some(before), _) => format!(
            "kept the budget at rate {} starts/s, burst {} slots: it was changed by hand since the last sync, \
             which set {}; --force overwrites it with {target}",
            number(before.rate_per_second),
            number(before.burst),
            outcome.last_sync.as_ref().map_or("?".into(), |r| format!(
                "rate {} starts/s, burst {} slots",
                number(r.rate_per_second),
                number(r.burst)
            )),
        ),
        _ => format!("the budget already is {target}: nothing to write"),
    };
    out.push_str(&action);
    out.push('\n');
    if let Some(after) = &outcome.after {
        out.push_str(&render_text(table, key, after, now));
    }
    out
}

/// `sync --json`'s object.
pub fn render_sync_json(
    table: &str,
    key: &str,
    workflow_type: WorkflowType,
    outcome: &SyncOutcome,
    now: f64,
) -> serde_json::Value {
    let reading = |r: &quota_sync::quota::Reading| serde_json::json!({"value": r.value, "source": r.source.tag(), "from": r.source.describe()});
    serde_json::json!({
        "table": table,
        "key": key,
        "pk": budget_pk(key),
        "workflow_type": workflow_name(workflow_type).to_ascii_lowercase(),
        "quota": {
            "bucket": reading(&outcome.quota.bucket),
            "refill_per_second": reading(&outcome.quota.refill),
            "notes": outcome.quota.notes,
        },
        "share": outcome.share,
        "target": {"rate_per_second": outcome.target.rate_per_second, "burst": outcome.target.burst},
        "action": outcome.action.word(),
        "dry_run": outcome.dry_run,
        "hand_changed": outcome.hand_changed,
        "recorded": outcome.recorded,
        "previous": outcome.before.as_ref().map(|b| serde_json::json!({
            "rate_per_second": b.rate_per_second, "burst": b.burst, "version": b.version,
        })),
        "budget": outcome.after.as_ref().map(|b| render_json(table, key, b, now)),
        "last_sync": outcome.last_sync.as_ref().map(|r| serde_json::json!({
            "rate_per_second": r.rate_per_second, "burst": r.burst, "at": r.at_epoch_s,
        })),
        "summary": outcome.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfn_pacer::start::memory::MemoryStore;

    const TABLE: &str = "coord";
    const KEY: &str = "start-execution-standard";

    fn usage(result: Result<Limits, Failure>) -> String {
        match result {
            Err(Failure::Usage(message)) => message,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn validation_errors_name_the_flag() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let message = usage(Limits::new(Some(bad), Some(10.0)));
            assert!(message.starts_with("--rate "), "{message}");
        }
        for bad in [0.0, 0.5, -3.0, f64::NAN, f64::INFINITY] {
            let message = usage(Limits::new(Some(10.0), Some(bad)));
            assert!(message.starts_with("--burst "), "{message}");
        }
        let message = usage(Limits::new(None, None));
        assert!(message.contains("--rate") && message.contains("--burst"), "{message}");
        assert!(Limits::new(Some(0.5), Some(1.0)).is_ok());
        assert!(Limits::new(None, Some(1.0)).is_ok());
        assert!(Limits::new(Some(250.0), None).is_ok());

        for bad in ["", "a\nb", &"k".repeat(201)] {
            match validate_key(bad) {
                Err(Failure::Usage(message)) => assert!(message.starts_with("--key "), "{message}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(validate_key("team-a").is_ok());
    }

    #[test]
    fn clap_errors_fit_on_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --table <TABLE>\n\n\
                        Usage: sfn-pacer-quota --table <TABLE> <COMMAND>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line(rendered),
            "the following required arguments were not provided: --table <TABLE>"
        );
    }

    #[tokio::test]
    async fn set_creates_the_budget_when_absent() {
        let store = MemoryStore::new();
        let limits = Limits::new(Some(250.0), Some(1000.0)).unwrap();
        let outcome = set(&store, TABLE, KEY, limits).await.unwrap();
        assert!(outcome.created());
        assert_eq!(outcome.after, BudgetState::new(250.0, 1000.0));
        assert_eq!(store.item(KEY), Some(BudgetState::new(250.0, 1000.0)));
        assert_eq!(show(&store, TABLE, KEY).await.unwrap(), BudgetState::new(250.0, 1000.0));
    }

    #[tokio::test]
    async fn set_needs_both_limits_to_create() {
        let store = MemoryStore::new();
        let err = set(&store, TABLE, KEY, Limits::new(Some(250.0), None).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--burst"), "{err}");
        let err = set(&store, TABLE, KEY, Limits::new(None, Some(9.0)).unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--rate"), "{err}");
        assert_eq!(store.item(KEY), None);
    }

    #[tokio::test]
    async fn set_changes_one_field_and_bumps_the_version() {
        let store = MemoryStore::new();
        let existing = BudgetState {
            rate_per_second: 150.0,
            burst: 800.0,
            factor: 0.5,
            version: 7,
            // In the past: a full bucket, which stays full (a booked-ahead one keeps its level).
            tat: 1_700_000_000.25,
            ..BudgetState::new(150.0, 800.0)
        };
        store.write(KEY, &Update::Create(existing.clone())).await.unwrap();

        let outcome = set(&store, TABLE, KEY, Limits::new(Some(300.0), None).unwrap())
            .await
            .unwrap();
        assert_eq!(outcome.before, Some(existing.clone()));
        let expected = BudgetState {
            rate_per_second: 300.0,
            version: 8,
            ..existing.clone()
        };
        assert_eq!(outcome.after, expected);
        assert_eq!(store.item(KEY), Some(expected));

        let outcome = set(&store, TABLE, KEY, Limits::new(None, Some(1200.0)).unwrap())
            .await
            .unwrap();
        assert_eq!(outcome.after.rate_per_second, 300.0);
        assert_eq!(outcome.after.burst, 1200.0);
        assert_eq!(outcome.after.version, 9);
        // The factor is the instances'; a full bucket's tat stays as it is.
        assert_eq!(outcome.after.factor, 0.5);
        assert_eq!(outcome.after.tat, existing.tat);
        let text = render_set_text(TABLE, KEY, &outcome, existing.tat);
        assert!(
            text.starts_with("set rate 300 → 300 starts/s, burst 800 → 1200 slots (version 8 → 9)"),
            "{text}"
        );
        let json = render_set_json(TABLE, KEY, &outcome, existing.tat);
        assert_eq!(json["created"], false);
        assert_eq!(json["previous"]["burst"], 800.0);
        assert_eq!(json["burst"], 1200.0);
    }

    #[tokio::test]
    async fn show_without_a_budget_says_how_it_is_created() {
        let store = MemoryStore::new();
        let err = show(&store, TABLE, "team-a").await.unwrap_err();
        assert_eq!(err.exit_code(), 1);
        let message = err.to_string();
        assert!(
            message.starts_with("no budget under quota#team-a in table coord yet"),
            "{message}"
        );
        assert!(
            message.contains("STARTS_PER_SECOND") && message.contains("`set`"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn store_errors_name_the_operation_and_table_on_one_line() {
        let store = MemoryStore::new();
        // What DynamoStore's StoreError holds for a missing table (DisplayErrorContext).
        store.set_failure(Some(
            "service error: ResourceNotFoundException: Requested resource not found: \
             ResourceNotFoundException: Requested resource not found (ServiceError(ServiceError { \
             source: ResourceNotFoundException { message: Some(\"Requested resource not found\") },\n \
             raw: Response { status: StatusCode(400) } }))",
        ));
        let err = show(&store, "missing", KEY).await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            err.to_string(),
            "GetItem on table missing: ResourceNotFoundException: Requested resource not found"
        );
        let limits = Limits::new(Some(1.0), Some(1.0)).unwrap();
        let err = set(&store, "missing", KEY, limits).await.unwrap_err();
        assert!(err.to_string().starts_with("GetItem on table missing: "), "{err}");
        assert_eq!(
            one_line(
                "dispatch failure: io error: tcp connect error: Connection refused (os error 111) (DispatchFailure(x))"
            ),
            "dispatch failure: io error: tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(one_line("timed out\n after 5 s"), "timed out after 5 s");
    }

    #[test]
    fn show_renders_the_numbers_with_units() {
        let now = 1_800_000_000.0;
        // Factor 0.5: r_eff = 150/s; B_eff = 1000 − 300 × 0.1 = 970; tat 2 s ahead: 970 − 300 = 670.
        let state = BudgetState {
            rate_per_second: 300.0,
            burst: 1000.0,
            factor: 0.5,
            version: 12,
            tat: now + 2.0,
            ..BudgetState::new(300.0, 1000.0)
        };
        let text = render_text(TABLE, KEY, &state, now);
        for expected in [
            "budget quota#start-execution-standard in table coord",
            "rate            300 starts/s",
            "burst           1000 slots",
            "factor          0.5",
            "effective rate  150 starts/s (rate × factor)",
            "effective burst 970 slots",
            "slots now       670 of 970 slots",
            "version         12",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
        let json = render_json(TABLE, KEY, &state, now);
        assert_eq!(json["rate_per_second"], 300.0);
        assert_eq!(json["burst"], 1000.0);
        assert_eq!(json["effective_rate_per_second"], 150.0);
        assert_eq!(json["slots_now"], 670.0);
        assert_eq!(json["version"], 12);
        assert_eq!(json["pk"], "quota#start-execution-standard");
    }

    #[test]
    fn slots_are_clamped_to_the_bucket() {
        let now = 1_800_000_000.0;
        let mut state = BudgetState::new(100.0, 50.0); // B_eff = 40
        assert_eq!(slots_now(&state, now), 40.0); // tat long past: full
        state.tat = now + 10.0; // booked far ahead: empty, not negative
        assert_eq!(slots_now(&state, now), 0.0);
        state.tat = now + 0.1;
        assert!((slots_now(&state, now) - 30.0).abs() < 1e-3);
        assert_eq!(number(0.7346), "0.735");
        assert_eq!(number(250.0), "250");
        assert_eq!(number(-0.0001), "0");
    }
}
