//! A local SQS event source mapping (ESM), for use with `cargo lambda watch` and moto.
//!
//! It does what AWS's SQS event source mapping does with `ReportBatchItemFailures`:
//! long-poll the queue, gather a batch (`BatchSize`, `MaximumBatchingWindowInSeconds`), invoke
//! the function with an SQS event of the real record shape, delete the acknowledged messages
//! and leave the reported failures to become visible again; up to `MaximumConcurrency` batches
//! in flight. The queue's own redrive policy then moves messages that fail too often to the
//! dead-letter queue.
//!
//! The decisions are pure and unit-tested: [`gather`] (when to invoke), [`event`] (the event,
//! `aws_lambda_events`' own type), [`response`] (what to delete after an invocation). [`runner`]
//! drives them through the small [`runner::Queue`] and [`runner::Invoker`] traits, implemented
//! for SQS in [`sqs`] and for the in-memory queue in [`crate::sim`]; for the local invoke
//! endpoint (`cargo lambda watch`) in [`invoke`] and for `Starter`s in this process in
//! [`in_process`]. This is the one mapping loop: the `local-esm` tool, the simulated runs of the
//! tests and the bench all run it.

pub mod event;
pub mod gather;
pub mod in_process;
pub mod invoke;
pub mod response;
pub mod runner;
pub mod sqs;

pub use runner::{run, EsmConfig, Summary};
