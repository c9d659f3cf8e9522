//! Why a quota command or sync failed, on one line, and so its exit code.

use std::fmt;

use sfn_pacer::aws::dynamo::budget_pk;
use sfn_pacer::start::budget::Update;
use sfn_pacer::start::table::StoreError;

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
    /// `cap show` found no cap on running executions under the key (exit 1).
    NoCap {
        /// The table.
        table: String,
        /// The cap's key (`RUNNING_KEY`, not the `pk`).
        key: String,
    },
    /// The table answered something the command cannot act on (exit 2).
    Unexpected(String),
    /// `sync` found the account's quota in none of its sources (exit 2): what each one said.
    NoQuota(String),
}

impl Failure {
    /// The process exit code: 1 for "no budget", else 2.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::NoBudget { .. } | Failure::NoCap { .. } => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(message) | Failure::Unexpected(message) | Failure::NoQuota(message) => f.write_str(message),
            Failure::NoBudget { table, key } => write!(
                f,
                "no budget under {} in table {table} yet: it is created by the first instance that starts, \
                 from its STARTS_PER_SECOND and STARTS_BURST; or create it with `set`",
                budget_pk(key)
            ),
            Failure::NoCap { table, key } => write!(
                f,
                "no cap under running#{key} in table {table} yet: it is created by the first instance that starts \
                 with MAX_RUNNING_EXECUTIONS and RUNNING_KEY {key}; or create it with `cap set --max N`"
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

/// A failed call to the table `table`.
pub fn store_failure(operation: &'static str, table: &str, error: StoreError) -> Failure {
    Failure::Store {
        operation,
        table: table.to_string(),
        message: one_line(&error.message),
    }
}

/// The DynamoDB operation behind an update (the adapter puts a `Create`, updates the rest).
pub fn operation_of(update: &Update) -> &'static str {
    match update {
        Update::Create(_) => "PutItem",
        _ => "UpdateItem",
    }
}
