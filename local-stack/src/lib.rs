//! The local AWS stack of sfn-pacer: one piece of code for each piece of scaffolding, shared by
//! the integration tests, the tools (`local-esm`, `producer`), the bench and the demo.
//!
//! - [`paths`]: the workspace root and the programs the stack runs (`moto_server`, `cargo-lambda`);
//! - [`process`]: child processes in their own process groups, reaped and stopped in order;
//! - [`moto`]: `moto_server` on loopback, SDK configs pointed at it, the resources a run needs;
//! - [`sim`]: an in-memory SQS queue with SQS's semantics, for runs of thousands of messages;
//! - [`esm`]: the event source mapping loop (gather, invoke, delete the acknowledged), over SQS
//!   or [`sim`], invoking the function over HTTP or in-process;
//! - [`fake_sfn`]: a Step Functions endpoint with the quota's token bucket and injected faults;
//! - [`fake_quotas`]: Service Quotas and CloudWatch `GetMetricData`, which moto lacks;
//! - [`jsonata`]: Step Functions' JSONata, for the requests of a sample state machine;
//! - [`events`]: EventBridge's events for the function (status changes of executions the local
//!   stack ends, a schedule's tick);
//! - [`executions`]: executions that take time, in process (the cap's chaos test and bench), and
//!   EventBridge's delivery of their events, with faults.

pub mod cli;
pub mod esm;
pub mod events;
pub mod executions;
pub mod fake_quotas;
pub mod fake_sfn;
pub mod jsonata;
pub mod moto;
pub mod paths;
pub mod process;
pub mod sim;

/// An error and its sources on one line (SDK errors say little at the top level).
pub use aws_smithy_types::error::display::DisplayErrorContext;
