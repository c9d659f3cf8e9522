//! The quota sync: sets the shared StartExecution budget (one item of the coordination table,
//! `sfn_pacer::start::budget`) to a share of the account's own StartExecution quota, so that a quota
//! AWS raised is used, and a budget typed at deploy does not outlive the quota it was typed for.
//!
//! One piece of code for the scheduled Lambda (`main.rs`, the template's `QuotaSyncSchedule`)
//! and the operator's `sfn-pacer-quota sync`:
//! - [`quota`]: what the account's quota is, from Service Quotas (applied, then default values)
//!   and else CloudWatch's `AWS/States` `ProvisionedBucketSize` / `ProvisionedRefillRate`;
//! - [`sync`]: the budget it implies (`share × quota`), and whether to write it: a budget whose
//!   limits were changed by hand since the last sync is kept unless forced;
//! - [`write`]: the budget's compare-and-set write, shared with `sfn-pacer-quota set`;
//! - [`failure`]: what went wrong, on one line, and the tools' exit codes;
//! - [`aws`]: the SDK adapters (Service Quotas, CloudWatch, the sync's record in DynamoDB);
//! - [`config`]: the Lambda's environment; [`lambda`]: its invocation and log line;
//! - [`memory`]: in-memory doubles of the sources and the record, for tests.

pub mod aws;
pub mod config;
pub mod failure;
pub mod lambda;
pub mod memory;
pub mod quota;
pub mod sync;
pub mod write;

pub use failure::Failure;
