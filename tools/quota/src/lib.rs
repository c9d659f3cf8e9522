//! `sfn-pacer-quota`'s logic, behind the [`Store`] trait so that it runs against the in-memory
//! store in unit tests and against DynamoDB in the binary: the validation of the operator's
//! values, `show`'s rendering (text and JSON), and `set` (read, then create or `SetLimits`).
//!
//! The budget is the GCRA bucket of `sfn_pacer::start::budget`: the bucket holds
//! `B_eff − r_eff × max(0, tat − now)` slots now, clamped to `[0, B_eff]`, with the effective
//! burst and rate of [`BudgetState::effective_burst`] and [`BudgetState::effective_rate`].

use std::fmt;

use sfn_pacer::aws::dynamo::budget_pk;
use sfn_pacer::config::BURST_RESERVE;
use sfn_pacer::start::budget::{BudgetState, Store, Update, Written};
use sfn_pacer::start::table::StoreError;

/// The program's name, the prefix of every message on stderr.
pub const TOOL: &str = "sfn-pacer-quota";

/// The longest quota key the function accepts (its `QUOTA_KEY` check).
pub const MAX_KEY_CHARS: usize = 200;

/// Writes `set` tries before it gives up (each retry follows a concurrent create or delete).
const SET_ATTEMPTS: usize = 10;

/// Why the command failed, and so its exit code.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A flag's value is wrong (exit 2). The message names the flag.
    Usage(String),
    /// `show` found no budget under the key (exit 1).
    NoBudget {
        /// The table.
        table: String,
        /// The quota key (not the `pk`).
        key: String,
    },
    /// A call to the table failed (exit 2).
    Store {
        /// The DynamoDB operation: `GetItem`, `PutItem` or `UpdateItem`.
        operation: &'static str,
        /// The table.
        table: String,
        /// The SDK's error, on one line.
        message: String,
    },
    /// The table answered something `set` cannot act on (exit 2).
    Unexpected(String),
}

impl Failure {
    /// The process exit code: 1 for "no budget", else 2.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::NoBudget { .. } => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(message) | Failure::Unexpected(message) => f.write_str(message),
            Failure::NoBudget { table, key } => write!(
                f,
                "no budget under {} in table {table} yet: it is created by the first instance that starts, \
                 from its STARTS_PER_SECOND and STARTS_BURST; or create it with `set`",
                budget_pk(key)
            ),
            Failure::Store {
                operation,
                table,
                message,
            } => write!(f, "{operation} on table {table}: {message}"),
        }
    }
}

impl std::error::Error for Failure {}

/// The SDK's error text on one line and without its debug dump: `DisplayErrorContext` gives
/// "service error: X: message: X: message (ServiceError(ServiceError { ... raw: Response ... }))";
/// this keeps "X: message".
pub fn one_line(message: &str) -> String {
    let mut text = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let debug_dump = [
        "ServiceError",
        "DispatchFailure",
        "TimeoutError",
        "ResponseError",
        "ConstructionFailure",
    ]
    .iter()
    .filter_map(|variant| text.find(&format!(" ({variant}(")))
    .min();
    if let Some(at) = debug_dump {
        text.truncate(at);
    }
    let text = text.strip_prefix("service error: ").unwrap_or(&text);
    let parts: Vec<&str> = text.split(": ").collect();
    let half = parts.len() / 2;
    if parts.len().is_multiple_of(2) && half > 0 && parts[..half] == parts[half..] {
        parts[..half].join(": ")
    } else {
        text.to_string()
    }
}

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

fn store_failure(operation: &'static str, table: &str, error: StoreError) -> Failure {
    Failure::Store {
        operation,
        table: table.to_string(),
        message: one_line(&error.message),
    }
}

/// The DynamoDB operation behind an update (the adapter puts a `Create`, updates the rest).
fn operation_of(update: &Update) -> &'static str {
    match update {
        Update::Create(_) => "PutItem",
        _ => "UpdateItem",
    }
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

/// What `set` did.
#[derive(Debug, Clone, PartialEq)]
pub struct SetOutcome {
    /// The budget before the write (`None`: `set` created it).
    pub before: Option<BudgetState>,
    /// The budget after the write.
    pub after: BudgetState,
}

impl SetOutcome {
    /// True when `set` created the budget.
    pub fn created(&self) -> bool {
        self.before.is_none()
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
    let mut current = store.get(key).await.map_err(|e| store_failure("GetItem", table, e))?;
    for _ in 0..SET_ATTEMPTS {
        let (rate_per_second, burst) = limits.resolve(current.as_ref())?;
        let update = match current {
            None => Update::Create(BudgetState::new(rate_per_second, burst)),
            Some(ref state) => state.plan_set_limits(rate_per_second, burst, epoch_now()),
        };
        let written = store
            .write(key, &update)
            .await
            .map_err(|e| store_failure(operation_of(&update), table, e))?;
        match (written, &update) {
            (Written::Applied(after), _) => return Ok(SetOutcome { before: current, after }),
            // The item is there but is no budget (its attributes do not read as one).
            (Written::Refused(None), Update::Create(_)) => {
                return Err(Failure::Unexpected(format!(
                    "PutItem on table {table}: an item under {} exists but is not a budget \
                     (rate, burst and version are needed); delete it or use another --key",
                    budget_pk(key)
                )))
            }
            (Written::Refused(now), _) => current = now,
        }
    }
    Err(Failure::Unexpected(format!(
        "the budget under {} in table {table} changed under every one of {SET_ATTEMPTS} writes; try again",
        budget_pk(key)
    )))
}

/// Now, seconds since the Unix epoch (the budget's clock).
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Slots the bucket holds at `now` (seconds since the epoch):
/// `B_eff − r_eff × max(0, tat − now)`, clamped to `[0, B_eff]`.
pub fn slots_now(state: &BudgetState, now: f64) -> f64 {
    let burst = state.effective_burst();
    (burst - state.effective_rate() * (state.tat - now).max(0.0)).clamp(0.0, burst)
}

/// `value` with at most 3 decimals, trailing zeros dropped (`250`, `0.5`, `0.734`).
pub fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
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
        format!("{} starts/s (rate × factor)", number(state.effective_rate())),
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
        "effective_rate_per_second": state.effective_rate(),
        "effective_burst": state.effective_burst(),
        "slots_now": slots_now(state, now),
        "version": state.version,
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
            spread: 0.0,
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
            spread: 0.0,
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
