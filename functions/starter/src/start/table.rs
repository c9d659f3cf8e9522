//! The coordination table (DynamoDB), as every store in it sees it: why a call failed, and the
//! limits DynamoDB enforces. The DynamoDB adapters ([`crate::aws::dynamo`]) map the SDK's
//! errors onto [`StoreErrorKind`]; the in-memory table ([`crate::start::memory`]) enforces the
//! limits and injects the faults.

/// An item's size limit: 400 KB (names and values).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// TransactWriteItems: at most 100 actions.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// TransactWriteItems: at most 4 MB in all.
pub const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;
/// BatchGetItem: at most 100 keys.
pub const MAX_BATCH_GET_KEYS: usize = 100;
/// The write units per second one item (one partition key) takes, on-demand or provisioned;
/// beyond, DynamoDB throttles the writes to it.
pub const ITEM_WRITE_UNITS_PER_SECOND: f64 = 1_000.0;

/// The write units one write of an item of `bytes` consumes: one per KB (rounded up, at least
/// one), twice that in a transaction. A refused conditional write consumes them too.
pub fn write_units(bytes: usize, transactional: bool) -> u64 {
    let units = bytes.div_ceil(1024).max(1) as u64;
    match transactional {
        true => 2 * units,
        false => units,
    }
}

/// Why a call to the coordination table failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Refused for capacity, not applied: `ThrottlingException`,
    /// `ProvisionedThroughputExceededException`, `RequestLimitExceeded` (a hot item takes at
    /// most [`ITEM_WRITE_UNITS_PER_SECOND`]).
    Throttled,
    /// No answer, a 5xx or a broken connection: a write may or may not have been applied.
    Unknown,
    /// The caller's time ran out before an answer: a write may have been applied if it was sent.
    Deadline,
    /// Retrying will not help: a missing table or item, no permission, a malformed request.
    Permanent,
}

/// The coordination table could not be used for one call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// What happened, for the logs.
    pub message: String,
}

impl StoreError {
    /// An error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// Refused for capacity (not applied).
    pub fn throttled(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Throttled, message)
    }

    /// No answer, or a 5xx: a write may have been applied.
    pub fn unknown(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Unknown, message)
    }

    /// The caller's time ran out.
    pub fn deadline(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Deadline, message)
    }

    /// Retrying will not help.
    pub fn permanent(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Permanent, message)
    }
}

/// A table call bounded by `call_timeout` and by `latest`: an error of kind
/// [`StoreErrorKind::Deadline`] when no answer comes in time (or no time is left).
pub async fn bounded<T>(
    call_timeout: std::time::Duration,
    latest: tokio::time::Instant,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let limit = latest
        .saturating_duration_since(tokio::time::Instant::now())
        .min(call_timeout);
    if limit.is_zero() {
        return Err(StoreError::deadline(
            "no time left for a call to the coordination table",
        ));
    }
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::deadline(format!(
            "no answer from the coordination table within {} ms",
            limit.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_units_round_up_per_kilobyte_and_double_in_transactions() {
        assert_eq!(write_units(0, false), 1);
        assert_eq!(write_units(1024, false), 1);
        assert_eq!(write_units(1025, false), 2);
        assert_eq!(write_units(1025, true), 4);
        assert_eq!(write_units(MAX_ITEM_BYTES, false), 400);
    }
}
