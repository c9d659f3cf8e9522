//! The producer's logic: read or generate messages, batch them for `SendMessageBatch`, send
//! several batches at once at an optional pace, and retry what SQS did not accept.
//!
//! Everything but [`sqs`] runs without a network, so it is unit-tested with a fake sender.
//!
//! - [`batch`]: a message ([`batch::Entry`]), its SQS size, and batching into ≤ 10 entries and
//!   ≤ 1 MiB per call.
//! - [`input`]: JSON lines, and the synthetic generator (with a share of bad bodies).
//! - [`retry`]: backoff and the bookkeeping of partial failures.
//! - [`send`]: the pipeline (in-flight calls, pacing, progress, report).
//! - [`sqs`]: the `aws-sdk-sqs` adapter.

pub mod batch;
pub mod input;
pub mod retry;
pub mod send;
pub mod sqs;

pub use batch::Entry;
pub use send::{BatchSender, Report, SendConfig};
