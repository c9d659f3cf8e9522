//! sfn-pacer: an SQS-triggered Lambda that starts one Step Functions execution per message (or
//! per group of messages), paced under the account's StartExecution quota, idempotent by
//! execution name (in groups, by per-message claims), with a partial batch response.
//!
//! The modules follow the flow, one folder per phase of an invocation:
//! - [`plan`]: what each message asks for ([`plan::event`] → name, input, FIFO group; in batch
//!   mode [`plan::batch`] groups; [`plan::claim_check`] for inputs over the limit);
//! - [`start`]: slots and the StartExecution call ([`start::pace`], the shared budget
//!   [`start::budget`], the per-message claims [`start::claim`], the cap on running executions
//!   [`start::running`], [`start::classify`]);
//! - [`close`]: what goes back to SQS (dead letters, visibility changes with [`close::backoff`]);
//! - [`aws`]: the SDK adapters of the traits above ([`aws::dynamo`] for the coordination table).
//!
//! [`handler`] runs the phases; [`dispatch`] tells an SQS batch from the cap's events (a status
//! change, a schedule's tick); [`config`], [`metrics`] and [`logs`] serve them all.

pub mod aws;
pub mod close;
pub mod config;
pub mod dispatch;
pub mod handler;
pub mod logs;
pub mod metrics;
pub mod plan;
pub mod start;

pub use config::{Config, ConfigError};
pub use handler::{Disposition, Outcome, Starter};
